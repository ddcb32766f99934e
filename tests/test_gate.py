"""Input gate: image statistics, the view head's storage and verdicts, the fit command, and
the bundled gate on the shared lateral films, CT slices and frontal films."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tests.paths import NIH_IMAGES, REPO_ROOT, SHARED_DATA
from training import fit_gate
from training.gating.figures import separation
from training.gating.items import (
    CLASSES,
    KINDS,
    Item,
    held_out_items,
    ood_items,
    source_group,
    split_groups,
)
from training.gating.synthetic import augment, document_page, other_images
from training.gating.view_head import choose_levels
from xray_app.gate import (
    FRONTAL,
    N_STATISTICS,
    STATISTIC_NAMES,
    TENSOR_KEYS,
    GateConfigError,
    GateRefusedError,
    ViewGate,
    ViewResult,
    combine,
    image_statistics,
    unit_images,
)
from xray_app.model import load_checkpoint, write_random_init
from xray_app.ood import OodResult
from xray_app.predictor import Predictor
from xray_app.preprocess import PreprocessConfig, decode_image, preprocess, resize_gray
from xray_app.report import error_to_json, prediction_to_json

OOD = SHARED_DATA / "ood"
METADATA = SHARED_DATA / "nih" / "Data_Entry_2017_v2020.csv.gz"
WEIGHTS = REPO_ROOT / "weights"


# --------------------------------------------------------------------------- statistics
def test_statistics_have_their_documented_width_and_ranges() -> None:
    unit = torch.rand(3, 64, 64)
    stats = image_statistics(unit)
    assert stats.shape == (3, N_STATISTICS) == (3, len(STATISTIC_NAMES)), stats.shape
    histogram = stats[:, [i for i, n in enumerate(STATISTIC_NAMES) if n.startswith("histogram")]]
    assert torch.allclose(histogram.sum(dim=1), torch.ones(3)), "histogram shares must sum to 1"
    mirror = image_statistics((unit[:1] + unit[:1].flip(-1)) / 2)
    symmetric = STATISTIC_NAMES.index("symmetry_left_right")
    assert mirror[0, symmetric] == pytest.approx(1.0), "an image averaged with its mirror is symmetric"


def test_unit_images_undo_the_model_normalisation() -> None:
    config = PreprocessConfig(input_size=96)
    tensor, decoded = preprocess(NIH_IMAGES / "00000075_000.png", config)
    unit = unit_images(tensor.unsqueeze(0), config.mean[0], config.std[0])[0]
    expected = resize_gray(decoded.pixels, 96)
    assert np.abs(unit.numpy() - expected).max() < 1e-5, "channel 0 undone is the resized grey image"


def _statistic(paths: list[Path], name: str) -> np.ndarray:
    config = PreprocessConfig(input_size=160)
    batch = torch.stack([preprocess(p, config)[0] for p in paths])
    stats = image_statistics(unit_images(batch, config.mean[0], config.std[0]))
    return stats[:, STATISTIC_NAMES.index(name)].numpy()


def test_frontal_films_are_more_left_right_symmetric_than_lateral_films(shared_data) -> None:
    frontal = sorted(NIH_IMAGES.glob("*.png"))[:12]
    lateral = sorted((OOD / "lateral").iterdir())[:12]
    f, lat = (_statistic(p, "symmetry_left_right") for p in (frontal, lateral))
    assert np.median(f) > np.median(lat), f"median symmetry frontal {np.median(f):.3f} vs lateral {np.median(lat):.3f}"


# --------------------------------------------------------------------------- storage + verdicts
def _tiny_tensors(width: int, classes: int = 4) -> dict[str, torch.Tensor]:
    return {"view.mean": torch.zeros(width), "view.scale": torch.ones(width),
            "view.weight": torch.zeros(classes, width), "view.bias": torch.zeros(classes)}


ENTRY = {"method": "view-logistic", "classes": list(CLASSES), "warn": 0.5, "refuse": 0.9}


def test_view_gate_loading_names_what_is_wrong() -> None:
    assert ViewGate.from_parts({}, None) is None, "no gate entry: no gate"
    assert ViewGate.from_parts(_tiny_tensors(6), ENTRY) is not None, "a consistent gate loads"
    missing = _tiny_tensors(6)
    del missing["view.bias"]
    with pytest.raises(GateConfigError, match="ood.view.bias"):
        ViewGate.from_parts(missing, ENTRY)
    wrong = {**_tiny_tensors(6), "view.weight": torch.zeros(3, 6)}
    with pytest.raises(GateConfigError, match=r"ood.view.weight has shape \(3, 6\)"):
        ViewGate.from_parts(wrong, ENTRY)
    with pytest.raises(GateConfigError, match="0 <= warn <= refuse"):
        ViewGate.from_parts(_tiny_tensors(6), {**ENTRY, "warn": 0.95})
    with pytest.raises(GateConfigError, match="start with 'frontal'"):
        ViewGate.from_parts(_tiny_tensors(6), {**ENTRY, "classes": ["lateral", "frontal", "ct", "other"]})
    assert set(TENSOR_KEYS) == set(_tiny_tensors(1)), TENSOR_KEYS


def test_view_gate_levels_kind_and_message() -> None:
    tensors = _tiny_tensors(2)
    tensors["view.weight"] = torch.tensor([[4.0, 0.0], [0.0, 4.0], [0.0, 0.0], [0.0, 0.0]])
    gate = ViewGate.from_parts(tensors, ENTRY)
    results = gate.assess(torch.tensor([[3.0, 0.0], [0.0, 0.3], [0.0, 3.0]]))
    assert [r.level for r in results] == ["ok", "warn", "refuse"], results
    assert results[0].message == "" and results[0].score < 0.5, results[0]
    assert results[2].kind == "lateral" and "lateral chest film" in results[2].message, results[2]
    assert "no prediction is shown" in results[2].message, results[2].message
    assert sum(results[1].probabilities.values()) == pytest.approx(1.0), results[1].probabilities


def test_combine_reports_the_check_that_fired() -> None:
    quiet_view = ViewResult(0.1, "lateral", "ok", "", {})
    ct_view = ViewResult(0.8, "ct", "warn", "This looks like a CT slice", {})
    near = OodResult(50.0, "ok", "")
    far = OodResult(300.0, "refuse", "This image does not look like a chest radiograph")
    ok = combine(quiet_view, near)
    assert (ok.verdict, ok.check, ok.level, ok.score) == (FRONTAL, None, "ok", 0.1), ok
    assert ok.scores == {"view": 0.1, "feature_distance": 50.0}, ok.scores
    ct = combine(ct_view, near)
    assert (ct.verdict, ct.check, ct.level) == ("other_modality", "view", "warn"), ct
    unknown = combine(quiet_view, far)
    assert (unknown.verdict, unknown.check, unknown.level, unknown.score) == (
        "unknown", "feature_distance", "refuse", 300.0), unknown
    assert combine(ct_view, far).check == "feature_distance", "the higher level wins"
    assert combine(None, near).verdict == FRONTAL, "a checkpoint with only the distance still gets a verdict"
    json_form = ct.to_json()
    assert list(json_form) == ["verdict", "check", "score", "level", "scores"], json_form
    record = error_to_json("scan.png", GateRefusedError("scan.png", combine(quiet_view, far)))
    assert record["gate"]["verdict"] == "unknown" and "chest radiograph" in record["error"], record


# --------------------------------------------------------------------------- fitting helpers
def test_source_groups_and_split_keep_groups_whole() -> None:
    assert source_group("https://radiopaedia.org/cases/x?lang=us") == "https://radiopaedia.org/cases/x"
    assert source_group("https://kjr.org/DOIx.php?id=10.3348/a") == "https://kjr.org/DOIx.php?id=10.3348/a"
    items = ood_items(OOD)
    kinds = {kind: sum(i.kind == kind for i in items) for kind in ("lateral", "ct", "other_frontal")}
    assert kinds == {"lateral": 26, "ct": 36, "other_frontal": 30}, kinds
    fit_items, held = split_groups(items, 0.4, seed=0)
    assert {i.group for i in fit_items}.isdisjoint({i.group for i in held}), "a source on both sides"
    assert len(fit_items) + len(held) == len(items)
    again = split_groups(items, 0.4, seed=0)[1]
    assert [i.path for i in again] == [i.path for i in held], "the split is seeded"
    for kind in kinds:
        assert any(i.kind == kind for i in held) and any(i.kind == kind for i in fit_items), kind


def test_held_out_limit_draws_only_nih_films_and_is_seeded() -> None:
    items = [Item(Path(f"n{i}.png"), "nih_frontal", f"patient:{i}") for i in range(50)]
    items += [Item(Path(f"l{i}.png"), "lateral", f"source:{i}") for i in range(10)]
    full = held_out_items(items, 0.4, seed=3)
    limited = held_out_items(items, 0.4, seed=3, max_nih=5)
    assert sum(i.kind == "nih_frontal" for i in limited) == 5, limited
    assert [i for i in limited if i.kind == "lateral"] == [i for i in full if i.kind == "lateral"]
    assert set(limited) <= set(full), "the limit only drops held-out films"
    assert limited == held_out_items(items, 0.4, seed=3, max_nih=5), "seeded"


def test_levels_follow_the_written_rule() -> None:
    nih = np.linspace(0, 1, 101)  # 98th percentile 0.98
    other = np.linspace(0, 0.5, 11)  # 90th percentile 0.45
    warn, refuse = choose_levels(nih, other)
    assert warn == pytest.approx(0.98) and refuse == pytest.approx(1.0), (warn, refuse)
    warn, refuse = choose_levels(nih * 0.1, other)
    assert warn == pytest.approx(0.45) and refuse == pytest.approx(0.5), (warn, refuse)


def test_separation_is_the_auroc_of_positives_against_negatives() -> None:
    rng = np.random.default_rng(0)
    neg, pos = rng.normal(size=40), rng.normal(1, size=25).round(1)
    expected = roc_auc_score(np.r_[np.zeros(40), np.ones(25)], np.r_[neg, pos])
    assert separation(neg, pos) == pytest.approx(expected), "AUROC with ties counted half"
    assert separation(neg, pos[:0]) is None, "expected None (JSON null) without positives"


def test_augment_and_other_images_are_grey_unit_images() -> None:
    rng = np.random.default_rng(0)
    image = decode_image(NIH_IMAGES / "00000075_000.png").pixels
    for variant in [augment(image, rng) for _ in range(6)] + other_images(6, rng):
        assert variant.ndim == 2 and variant.dtype == np.float32, (variant.shape, variant.dtype)
        assert variant.min() >= 0.0 and variant.max() <= 1.0, (variant.min(), variant.max())
        assert min(variant.shape) >= 64, variant.shape


# --------------------------------------------------------------------------- the command
def _link_subset(tmp: Path) -> tuple[Path, Path]:
    """A few shared images, linked (never copied) into a temporary NIH and OOD folder."""
    nih, ood = tmp / "nih", tmp / "ood"
    nih.mkdir()
    for path in sorted(NIH_IMAGES.glob("*.png"))[:16]:
        (nih / path.name).symlink_to(path)
    with open(OOD / "sources.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [r for kind in ("lateral", "ct", "frontal")
              for r in [r for r in rows if r["file"].startswith(kind + "/")][:6]]
    for row in chosen:
        (ood / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        (ood / row["file"]).symlink_to(OOD / row["file"])
    with open(ood / "sources.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return nih, ood


def test_fit_command_writes_a_gate_the_app_applies(tmp_path, shared_data, one_torch_thread) -> None:
    checkpoint = write_random_init(tmp_path / "ck", input_size=64)
    nih, ood = _link_subset(tmp_path)
    report = tmp_path / "gate.json"
    code = fit_gate.main(["--checkpoint", str(checkpoint), "--images", str(nih), "--metadata", str(METADATA),
                     "--ood-dir", str(ood), "--augment-copies", "1", "--n-other", "6", "--folds", "2",
                     "--report", str(report)])
    assert code == 0, f"expected exit 0, got {code}"
    entry = json.loads(report.read_text())
    assert 0.0 <= entry["warn"] <= entry["refuse"] <= 1.0, entry
    assert set(entry["held_out"]) <= set(KINDS) and entry["held_out"], entry["held_out"]
    for figures in entry["held_out"].values():
        assert 0 <= figures["gate_refused"] <= figures["gate_flagged"] <= figures["n"], figures
    loaded = load_checkpoint(checkpoint)
    assert loaded.config.gate == entry, "config.json's gate entry is the report"
    assert ViewGate.from_checkpoint(loaded) is not None, "the app loads the gate it wrote"
    predictor = Predictor(loaded, device="cpu")
    outcome = predictor.predict_batch([NIH_IMAGES / "00000075_000.png", OOD / "lateral" / "000002-2.jpg"])
    for result in outcome:
        gate = getattr(result, "gate", None)
        assert gate is not None and gate.verdict in ("frontal", "lateral", "other_modality", "unknown"), result
        assert "view" in gate.scores, f"the view head scored it: {gate}"
    good = next(r for r in outcome if not isinstance(r, GateRefusedError))
    record = prediction_to_json(good, predictor.model_info)
    assert record["gate"]["level"] in ("ok", "warn") and list(record)[-1] == "gate", record["gate"]


def test_fit_command_names_a_missing_ood_folder(tmp_path, capsys) -> None:
    checkpoint = write_random_init(tmp_path / "ck", input_size=64)
    code = fit_gate.main(["--checkpoint", str(checkpoint), "--images", str(NIH_IMAGES),
                     "--metadata", str(METADATA), "--ood-dir", str(tmp_path / "nowhere")])
    assert code == 2, f"expected exit 2, got {code}"
    assert "sources.csv not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- the bundled gate
@pytest.fixture(scope="module")
def bundled() -> Predictor:
    checkpoint = load_checkpoint(WEIGHTS)
    if not checkpoint.config.gate:
        pytest.fail("weights/config.json has no gate entry: run python -m training.fit_gate")
    return Predictor(checkpoint, device="cpu")


def test_bundled_gate_on_held_out_images_matches_its_recorded_figures(bundled, shared_data) -> None:
    """The app's own path gives, on the held-out lateral, CT and other frontal films, the
    counts the fit command recorded in config.json (and which the card shows)."""
    entry = bundled.config.gate
    split = entry["fit_config"]
    _, held = split_groups(ood_items(OOD), float(split["held_out_fraction"]), int(split["seed"]))
    assert sorted({i.group for i in held}) == entry["held_out_groups"], "same held-out sources"
    outcomes = bundled.predict_batch([i.path for i in held])
    for kind in ("lateral", "ct", "other_frontal"):
        results = [o for i, o in zip(held, outcomes, strict=True) if i.kind == kind]
        flagged = sum(isinstance(o, GateRefusedError) or o.gate.level != "ok" for o in results)
        recorded = entry["held_out"][kind]
        assert (len(results), flagged) == (recorded["n"], recorded["gate_flagged"]), (
            f"{kind}: app flagged {flagged} of {len(results)}, config.json says {recorded}")


# --------------------------------------------------------------------------- the card
def test_card_reports_the_held_out_figures_per_kind() -> None:
    from training.model_card import _gate_section

    entry = {**ENTRY, "features": "f", "score": "1 - p(frontal)", "levels": "rule", "split": "by group",
             "date": "2026-12-04T00:00:00Z", "fit_images": {"nih_frontal": 5}, "fit_with_variants": {"other": 2},
             "held_out": {"lateral": {"n": 9, "auroc_vs_nih_frontal": 0.99, "view_flagged": 8,
                                      "view_refused": 5, "gate_flagged": 9, "gate_refused": 5}}}
    text = "\n".join(_gate_section({"gate": entry}))
    assert "| lateral chest films | 9 | 0.990 | 8 (88.9%) | 9 (100.0%) | 5 |" in text, text
    assert "above 0.900 no findings are shown" in text, text
    assert "no view head" in "\n".join(_gate_section({})), "a checkpoint without a gate says so"


def test_command_line_and_ui_say_what_the_gate_saw(bundled, shared_data, tmp_path, capsys) -> None:
    from xray_app import ui
    from xray_app.predict import main

    lateral = OOD / "lateral" / "000002-7.png"  # a held-out source (Eurorad case 10960)
    code = main([str(NIH_IMAGES / "00000075_000.png"), str(lateral), "--weights", str(WEIGHTS),
                 "--json", "--device", "cpu"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 2, records
    assert records[1]["gate"]["verdict"] == "lateral" and records[1]["gate"]["check"] == "view", records[1]
    message = records[1].get("error") or " ".join(records[1]["warnings"])
    assert "lateral chest film" in message and "frontal (PA/AP)" in message, message
    assert code == (1 if "error" in records[1] else 0), f"exit status {code} for {records[1]}"
    rows, _ = ui.analyse_batch(bundled, [str(lateral)], tmp_path)
    assert rows[0][5].startswith("lateral ("), f"the batch table names the verdict: {rows[0]}"


def test_bundled_gate_calls_a_rendered_document_another_modality(bundled) -> None:
    import io

    from PIL import Image

    page = document_page(np.random.default_rng(98765))  # a seed the fit never drew
    buffer = io.BytesIO()
    Image.fromarray((page * 255).astype(np.uint8)).save(buffer, format="PNG")
    (outcome,) = bundled.predict_batch([buffer.getvalue()], names=["letter.png"])
    gate = outcome.gate
    assert (gate.verdict, gate.check) == ("other_modality", "view") and gate.level != "ok", gate
    assert "photograph, document" in gate.message, gate.message
