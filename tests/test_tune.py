"""Hyperparameter search: the trial -> config mapping, storages, 2 workers, retries, export."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import FixedTrial, TrialState

from training import tune
from training.fitting.config import ConfigError, from_dict, parse_config

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "nih"


def _base(**changes):
    cfg = from_dict({"data": {"images": str(DATA / "images")}, "epochs": 3})
    return dataclasses.replace(cfg, **changes)


PARAMS = {
    "lr": 2e-4, "batch_size": 32, "threshold": 0.4, "focal_alpha": 0.3,
    "focal_gamma": 1.5, "max_class_weight": 12.0, "no_finding_fraction": 0.4,
}


def test_apply_params_is_a_pure_mapping_onto_the_training_config() -> None:
    base = _base()
    cfg = tune.apply_params(PARAMS, base, out="runs/x")
    for name in ("lr", "batch_size", "focal_alpha", "focal_gamma", "max_class_weight",
                 "no_finding_fraction"):
        assert getattr(cfg, name) == PARAMS[name], f"{name} should be the trial's value"
    assert cfg.out == "runs/x" and cfg.epochs == 3 and cfg.data == base.data, "the rest is the base"
    assert base.lr != PARAMS["lr"] and base.out == "runs/latest", "the base config is not modified"
    assert not hasattr(cfg, "threshold"), "the threshold is not a training setting"
    with pytest.raises(ConfigError, match="not TrainConfig fields"):
        tune.apply_params({"learning_rate": 1e-3}, base)
    with pytest.raises(ConfigError, match="focal_alpha"):
        tune.apply_params({**PARAMS, "focal_alpha": 1.5}, base)  # TrainConfig's own check


def test_suggest_draws_every_parameter_within_the_space() -> None:
    space = tune.SearchSpace()
    drawn = tune.suggest(FixedTrial(PARAMS), space)
    assert drawn == PARAMS, f"a FixedTrial's values come back unchanged: {drawn}"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = tune.suggest(study.ask(), space)
        assert space.lr[0] <= params["lr"] <= space.lr[1], params
        assert params["batch_size"] in space.batch_sizes, params
        assert 0 < params["focal_alpha"] < 1, params  # valid for TrainConfig
        assert space.no_finding_fraction[0] <= params["no_finding_fraction"] <= 1.0, params
        tune.apply_params(params, _base())  # every draw is a valid config


def test_macro_f1_on_hand_made_predictions() -> None:
    y = np.array([[1, 0], [1, 0], [0, 0], [0, 1]])
    p = np.array([[0.9, 0.1], [0.2, 0.1], [0.8, 0.1], [0.1, 0.7]])
    # class 0: tp 1, fp 1, fn 1 -> F1 0.5; class 1: tp 1 -> F1 1.0
    assert tune.macro_f1(y, p, 0.5) == pytest.approx(0.75), "mean of 0.5 and 1.0"
    assert tune.macro_f1(y[:, :1], p[:, :1], 0.95) == 0.0, "nothing predicted: F1 0"
    assert np.isnan(tune.macro_f1(np.zeros((3, 2)), p[:3], 0.5)), "no positives: undefined"


def test_storage_urls(tmp_path: Path) -> None:
    journal = tune.make_storage(f"journal:{tmp_path / 'j' / 'study.log'}", max_retry=1)
    assert isinstance(journal, optuna.storages.JournalStorage), "journal:PATH -> journal file"
    assert journal.get_heartbeat_interval() == tune.HEARTBEAT_INTERVAL_S, "the journal gets heartbeats too"
    assert journal.get_heartbeat_stale_trial_callback() is not None, "and a retry of dead workers"
    sqlite = tune.make_storage(f"sqlite:///{tmp_path / 'study.db'}", max_retry=1)
    assert isinstance(sqlite, optuna.storages.RDBStorage), "sqlite URL -> RDB storage"
    assert sqlite.get_heartbeat_interval() == tune.HEARTBEAT_INTERVAL_S, "RDB gets heartbeats"
    assert sqlite.get_heartbeat_stale_trial_callback() is not None, "and a retry of dead workers"
    with pytest.raises(ConfigError, match="sqlite:///FILE"):
        tune.make_storage("study.db", max_retry=1)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_trial_whose_worker_went_silent_is_failed_and_requeued_with_its_parameters(
    tmp_path: Path, kind: str
) -> None:
    import time

    from optuna.distributions import FloatDistribution
    from optuna.storages import fail_stale_trials

    url = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    storage = tune.make_storage(url, max_retry=1, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=storage, study_name="silent")
    dead = study.ask({"lr": FloatDistribution(1e-5, 1e-3, log=True)})
    storage.record_heartbeat(dead._trial_id)  # its worker beat once, then was killed
    time.sleep(3.5)
    alive = study.ask()
    storage.record_heartbeat(alive._trial_id)
    fail_stale_trials(study)  # what every worker's study.optimize does before a new trial
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[dead.number] == TrialState.FAIL, f"expected the silent trial failed, got {states}"
    assert states[alive.number] == TrialState.RUNNING, "expected a trial with a fresh heartbeat left running"
    retries = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert len(retries) == 1, f"expected one re-queued trial, got {len(retries)}"
    assert retries[0].params == dead.params, "expected the retry to reuse the parameters"
    assert retries[0].system_attrs["failed_trial"] == dead.number, "expected the retry to name its failed trial"
    rerun = study.ask()  # the retry starts: its inherited old heartbeat must not fail it
    fail_stale_trials(study)
    assert rerun.number == retries[0].number and rerun.params == dead.params, "expected the retry run next"
    assert study.trials[rerun.number].state == TrialState.RUNNING, "expected the started retry left running"


def test_a_search_without_validation_is_refused_before_any_trial(tmp_path: Path, capsys) -> None:
    argv = ["--study-name", "s", "--out", str(tmp_path / "tune"), "--images", str(DATA / "images"),
            "--no-validate"]
    assert tune.main(argv) == 2, "expected a usage error"
    assert "--no-validate" in capsys.readouterr().err, "expected the flag named in the message"
    assert not (tmp_path / "tune").exists(), "expected no study started"


def test_without_drops_single_valued_flags() -> None:
    argv = ["--workers", "2", "--storage=x", "--epochs", "3", "--worker-index", "1"]
    kept = tune._without(argv, {"--workers", "--worker-index", "--storage"})
    assert kept == ["--epochs", "3"], kept


# A small real objective behind the real tune machinery: only ``fit`` is replaced, by a
# function whose validation AUROC rises per epoch towards a peak at lr = 1e-4, gamma = 2.
# The first attempt of trial 1 raises, like an out-of-memory error would.
WORKER = textwrap.dedent('''
    import math, sys, time
    from pathlib import Path
    import pandas as pd
    from training import tune
    from training.fitting.config import from_dict

    def toy_fit(cfg, *, on_epoch_end=None):
        run = Path(cfg.out)
        run.mkdir(parents=True, exist_ok=True)
        if run.name == "trial_0001" and not (run / "failed_once").exists():
            (run / "failed_once").touch()
            raise RuntimeError("simulated CUDA out of memory")
        quality = 0.9 - 0.1 * abs(math.log10(cfg.lr) + 4) - 0.02 * abs(cfg.focal_gamma - 2)
        history = []
        for epoch in range(cfg.epochs):
            time.sleep(0.1)
            value = quality * (1 - 0.5 ** (epoch + 1))
            history.append({"epoch": epoch + 1, "val_mean_auroc": value})
            pd.DataFrame(history).to_csv(run / "metrics.csv", index=False)
            on_epoch_end(epoch, {"val_mean_auroc": value})
        return run / "best"

    storage, out, index = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    base = from_dict({"data": {"images": "unused"}, "epochs": 2})
    settings = tune.StudySettings(
        study_name="toy", storage=storage, out=out, n_trials=8, worker_index=index,
        pruner_startup_trials=2, pruner_warmup_epochs=0, tpe_startup_trials=4,
    )
    tune.run_worker(settings, base, fit_fn=toy_fit, secondary=None)
''')


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_worker_processes_share_one_study(tmp_path: Path, kind: str) -> None:
    storage = (f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite"
               else f"journal:{tmp_path / 'study.log'}")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen([sys.executable, str(script), storage, str(tmp_path), str(i)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), "\n".join(o[-2000:] for o in outputs)

    study = optuna.load_study(study_name="toy", storage=tune.make_storage(storage, max_retry=1))
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    finished = sum(s in tune.FINISHED for s in states)
    assert 8 <= finished <= 9, f"--n-trials is study-wide: 8 finished (+1 race), got {states}"
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both processes ran trials"
    assert TrialState.PRUNED in states, f"the median pruner should stop some trials: {states}"
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in pruned:  # the median pruner compares with COMPLETE trials at the same epoch
        epoch = max(t.intermediate_values)
        best_so_far = max(t.intermediate_values.values())
        top = max(o.intermediate_values[epoch] for o in complete)
        assert best_so_far < top, f"trial {t.number} pruned at epoch {epoch} though it led ({best_so_far})"

    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [1], f"only trial 1's first attempt fails: {failed}"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retries) == 1 and retries[0].state in tune.FINISHED, "trial 1 retried once"
    assert retries[0].params == failed[0].params, "a retry runs the same parameters"
    assert retries[0].user_attrs["run"].endswith("trial_0001"), "in the failed trial's folder"

    # resuming: the same command again adds nothing to a study that has its 8 trials
    again = subprocess.run([sys.executable, str(script), storage, str(tmp_path), "0"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    after = optuna.load_study(study_name="toy", storage=tune.make_storage(storage, max_retry=1))
    finished_after = sum(t.state in tune.FINISHED for t in after.get_trials(deepcopy=False))
    assert finished_after <= finished + 1, "load_if_exists resumes the study, not a new one"


def _tiny_split(root: Path) -> Path:
    """24 train / 12 val real radiographs; the test split names an EMPTY file."""
    names = sorted(p.name for p in (DATA / "images").glob("*.png"))[:36]
    images = root / "images"
    images.mkdir()
    for name in names:
        (images / name).symlink_to(DATA / "images" / name)
    (images / "99999999_000.png").write_bytes(b"")  # decoding it would fail
    meta = pd.read_csv(DATA / "Data_Entry_2017_v2020.csv.gz",
                       usecols=["Image Index", "Finding Labels", "Patient ID"])
    meta = meta.set_index("Image Index").loc[names].reset_index()
    cols = ["Image Index", "Patient ID", "Finding Labels"]
    splits = root / "splits"
    splits.mkdir()
    meta[cols].iloc[:24].to_csv(splits / "train.csv", index=False)
    meta[cols].iloc[24:].to_csv(splits / "val.csv", index=False)
    pd.DataFrame([("99999999_000.png", 99999999, "No Finding")], columns=cols).to_csv(
        splits / "test.csv", index=False)
    return images


def test_one_real_trial_with_fit_and_the_exports(tmp_path: Path) -> None:
    images = _tiny_split(tmp_path)
    train_flags = [
        "--images", str(images), "--splits", str(tmp_path / "splits"), "--input-size", "32",
        "--epochs", "1", "--limit-batches", "1", "--pretrained", "none", "--architecture", "tiny-resnet", "--num-workers", "0",
        "--no-progress",
    ]
    out = tmp_path / "tune"
    args, base, _ = tune.parse_args(
        ["--study-name", "real", "--out", str(out), "--n-trials", "1", "--batch-sizes", "4",
         *train_flags]
    )
    settings = tune.settings_from(args, base)
    assert settings.storage == f"sqlite:///{(out / 'study.db').resolve()}", "SQLite by default"
    out.mkdir()
    study = tune.run_worker(settings, base)  # the real training.fitting.loop.fit
    trial = study.best_trial
    assert trial.state == TrialState.COMPLETE, f"the trial should complete: {study.trials}"
    assert 0.0 <= trial.value <= 1.0, f"value is a validation mean AUROC over the 14 pathologies: {trial.value}"
    assert list(trial.intermediate_values) == [0], "fit reported its one epoch"
    run = Path(trial.user_attrs["run"])
    assert (run / "best" / "model.safetensors").is_file(), "the trial's exported model is kept"
    assert not (run / "last.ckpt").exists(), "the resume state of a finished trial is removed"
    f1 = trial.user_attrs[tune.SECONDARY]
    assert 0.0 <= f1 <= 1.0, f"secondary metric at the trial's threshold: {f1}"

    summary = tune.export_study(study, base, out)
    reread = parse_config(["--config", str(out / "best_config.yaml")])
    assert reread == tune.apply_params(trial.params, base), "training.train reads the best config"
    assert (out / "optimization_history.png").read_bytes()[:4] == b"\x89PNG", "history plot"
    assert (out / "parallel_coordinate.png").read_bytes()[:4] == b"\x89PNG", "coordinates plot"
    assert summary["plots"]["param_importances"].startswith("skipped: needs >= 2"), summary
    saved = json.loads((out / "best_params.json").read_text())
    assert saved["best"]["params"] == trial.params and saved["trials"]["complete"] == 1, saved
