"""``python -m training.recipe_rule``: the rule for choosing a recipe, applied to the reports
``training.evaluate`` writes for real predictions on the shared radiographs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import logit

from tests.paths import SHARED_DATA
from training import evaluate, recipe_rule
from training.recipe_rule import Figure, Rule, Standing, decide
from xray_app.labels import NO_FINDING, PATHOLOGIES

NIH = SHARED_DATA / "nih"
METADATA = NIH / "Data_Entry_2017_v2020.csv.gz"
FILMS = 160


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> dict[str, Path]:
    """Three "recipes" scored on the same 160 shared films split between two source folders:
    ``good`` (the reference DenseNet's predictions), ``noisy_second`` (the same with noise
    added on the second folder's films only) and ``noisy`` (noise on every film), each a
    cross-validation folder with its per-folder evaluation and its paired comparison with
    ``good``, as ``training.evaluate`` writes them."""
    root = tmp_path_factory.mktemp("recipes")
    preds = pd.read_csv(NIH / "chexnet_repro_preds.csv", dtype={"Image Index": str}).iloc[:FILMS]
    folders = [root / "first", root / "second"]
    for k, folder in enumerate(folders):
        folder.mkdir()
        for name in preds["Image Index"].iloc[k * FILMS // 2:(k + 1) * FILMS // 2]:
            (folder / name).symlink_to(NIH / "images" / name)
    logits = logit(np.clip(preds[[f"prob_{name}" for name in PATHOLOGIES]].to_numpy(), 1e-6, 1 - 1e-6))
    rng = np.random.default_rng(0)
    second = np.arange(FILMS) >= FILMS // 2
    noise = rng.normal(0, 4, logits.shape)
    made = {"good": logits, "noisy_second": logits + noise * second[:, None], "noisy": logits + noise}
    runs = {}
    for name, values in made.items():
        run = root / name
        run.mkdir()
        frame = pd.DataFrame({"Image Index": preds["Image Index"]})
        for c, label in enumerate(PATHOLOGIES):
            frame[f"logit_{label}"] = values[:, c]
        frame[f"logit_{NO_FINDING}"] = -values.max(axis=1)
        frame.to_csv(run / "oof_predictions.csv", index=False)
        runs[name] = run
    for run in runs.values():
        common = ["--predictions", str(run / "oof_predictions.csv"), "--split", "val", "--metadata",
                  str(METADATA), "--n-boot", "20"]
        assert evaluate.main([*common, "--sources", *map(str, folders), "--out", str(run / "oof_eval")]) == 0
        assert evaluate.main([*common, "--compare", str(runs["good"] / "oof_predictions.csv"),
                              "--compare-name", "good", "--out", str(run / "oof_vs_good")]) == 0
    return runs


def _rule(recipes: dict[str, Path], out: Path, baseline: str, *candidates: str) -> dict:
    assert recipe_rule.main(["--baseline", f"{baseline}={recipes[baseline]}", "--candidates",
                             *(f"{c}={recipes[c]}" for c in candidates), "--paired", "oof_vs_good",
                             "--out", str(out)]) == 0
    return json.loads((out / "standing.json").read_text())


def test_the_deciding_figure_is_the_mean_of_the_per_folder_figures_the_evaluation_reports(recipes, tmp_path):
    standing = _rule(recipes, tmp_path / "out", "good", "noisy")
    report = json.loads((recipes["noisy"] / "oof_eval" / "report_val.json").read_text())
    folders = [entry["headline"]["value"] for entry in report["by_source"].values()]
    noisy = standing["candidates"][0]
    assert noisy["deciding"] == pytest.approx(sum(folders) / 2), "expected each folder to weigh the same"
    assert noisy["pooled"]["value"] == pytest.approx(report["metrics"]["headline"]["value"])
    paired = json.loads((recipes["noisy"] / "oof_vs_good" / "report_val.json").read_text())
    assert noisy["paired"]["value"] == pytest.approx(
        paired["comparison"]["paired"]["mean_auroc_difference"]["value"]), "expected the paired difference"


def test_a_worse_recipe_is_not_adopted_and_a_better_one_replaces_the_baseline(recipes, tmp_path):
    kept = _rule(recipes, tmp_path / "kept", "good", "noisy", "noisy_second")
    assert kept["chosen"] == "good"
    assert not any(c["decision"]["passes"] for c in kept["candidates"])
    replaced = _rule(recipes, tmp_path / "replaced", "noisy", "good", "noisy_second")
    assert [c["decision"]["passes"] for c in replaced["candidates"]] == [True, True]
    assert replaced["chosen"] == "good", "expected the passing candidate with the higher mean to be chosen"
    table = (tmp_path / "replaced" / "standing.md").read_text()
    assert "Chosen: **good**" in table and "| `first/` | `second/` |" in table


def test_a_candidate_whose_worse_folder_drops_too_far_is_refused_whatever_its_mean():
    def standing(name: str, first: float, second: float) -> Standing:
        return Standing(name, name, Figure((first + second) / 2), {"a": Figure(first), "b": Figure(second)})

    baseline = standing("base", 0.64, 0.70)
    lopsided = decide(standing("lopsided", 0.61, 0.76), baseline, Rule())
    assert lopsided.gain > 0.005 and not lopsided.passes and "worse folder down 0.030" in lopsided.reason
    assert decide(standing("even", 0.645, 0.705), baseline, Rule()).passes
    assert not decide(standing("small", 0.642, 0.702), baseline, Rule()).passes, "expected +0.002 to fall short"


def test_a_recipe_without_per_folder_figures_is_refused_with_the_command_to_run(recipes, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    assert recipe_rule.main(["--baseline", f"good={recipes['good']}", "--candidates", f"bare={bare}",
                             "--out", str(tmp_path / "out")]) == 2
    assert "training.evaluate" in capsys.readouterr().out
