"""Hyperparameter search with Optuna: a thin layer over :func:`training.fitting.loop.fit`.

    python -m training.tune --config base.yaml [training.train flags...] \\
        --study-name NAME [--storage sqlite:///study.db | URL | journal:PATH] \\
        [--n-trials N] [--timeout S] [--workers K] --out DIR

Each trial maps its parameters into the same :class:`~training.fitting.config.TrainConfig`
(:func:`apply_params`, a pure function) and calls the same ``fit``; ``fit`` reports the
headline metric, the validation mean AUROC over the 14 pathologies
(:mod:`training.metrics.headline`), after every epoch to :func:`report_and_maybe_prune`, which
feeds Optuna's median pruner.  The objective value is the best epoch's headline
(threshold-free).  The test split is never read: ``fit`` uses train and validation only.

Search space (:class:`SearchSpace`): learning rate (log-uniform), batch size
(categorical), focal alpha, focal gamma, maximum class weight (log-uniform), the
"No Finding" undersampling fraction, and a global decision ``threshold``.  The threshold
is *not* part of training and is *not* optimised: the per-class thresholds shipped with a
model are chosen afterwards on validation by ``training.evaluate`` (max F1).  In the
search it only defines a secondary figure, the validation macro-F1 of the trial's best
model at that threshold over the 14 pathologies (scored as the app scores, mirror
averaging included), recorded as the user attribute ``val_macro_f1_at_threshold``.

Storage: ``sqlite:///FILE`` (the default is ``OUT/study.db``), any SQLAlchemy URL
(PostgreSQL/MySQL for many machines) or ``journal:PATH`` (an append-only journal file,
for file systems where SQLite locking is unreliable, e.g. NFS).  Studies are created with
``load_if_exists``, so re-running the command resumes a study.  ``--n-trials`` is the
study-wide number of finished (complete or pruned) trials; several workers, started by
hand with the same ``--study-name``/``--storage`` (give each a different
``--worker-index``: it offsets the sampler's seed) or with ``--workers K``, share it
(trials already running when the count is reached still finish, so a study may end
with up to K - 1 extra trials).

Failed trials are retried (``--max-retry``, default 1) with the same parameters:

* a trial that raises (out of memory, NaN loss, I/O error...) is re-queued by
  :class:`RetryFailedTrials`, for every storage;
* a worker that dies mid-trial (killed, pre-empted) stops sending heartbeats (every
  60 s); after a grace period of 180 s, the next worker to start a trial marks it failed
  and Optuna's ``RetryHeartbeatStaleTrialCallback`` (the new name of
  ``RetryFailedTrialCallback``, deprecated in Optuna 4.9) re-queues it.  RDB storages
  (SQLite, SQLAlchemy URLs) have heartbeats in Optuna; the journal gets them from
  :class:`~training.fitting.journal_storage.HeartbeatJournalStorage` (workers on several
  machines need synchronised clocks there).

A retried trial runs in its original trial's folder and resumes from its ``last.ckpt``
(``fit``'s own resume), as in optuna-examples' ``pytorch_checkpoint.py``.

Outputs in ``--out``: ``best_config.yaml`` (valid ``training.train --config`` input),
``best_params.json``, ``trials.csv``, and Optuna's matplotlib plots
``optimization_history.png``, ``param_importances.png`` (needs >= 2 complete trials),
``parallel_coordinate.png`` and ``intermediate_values.png``; trial runs go to
``OUT/trials/trial_NNNN/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, Trial, TrialState

from training.fitting.config import ConfigError, TrainConfig, parse_config
from training.fitting.journal_storage import HeartbeatJournalStorage
from training.metrics.headline import VAL_HEADLINE

OBJECTIVE = VAL_HEADLINE
THRESHOLD = "threshold"
SECONDARY = "val_macro_f1_at_threshold"
TRIALS_DIR = "trials"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 180
STORAGE_ATTEMPTS = 5

FitFunction = Callable[..., Path]
Secondary = Callable[[Path, TrainConfig, float], float]


# --------------------------------------------------------------------------- space
@dataclass(frozen=True)
class SearchSpace:
    """Ranges of the tuned parameters (``(low, high)``; ``log`` = log-uniform)."""

    lr: tuple[float, float] = (1e-5, 1e-3)  # log
    batch_sizes: tuple[int, ...] = (16, 32, 64)
    threshold: tuple[float, float] = (0.1, 0.9)
    focal_alpha: tuple[float, float] = (0.1, 0.9)
    focal_gamma: tuple[float, float] = (0.0, 4.0)
    max_class_weight: tuple[float, float] = (1.0, 50.0)  # log
    no_finding_fraction: tuple[float, float] = (0.1, 1.0)


def suggest(trial: Trial, space: SearchSpace) -> dict[str, Any]:
    """Draw one set of parameters (names = ``TrainConfig`` fields, plus ``threshold``)."""
    return {
        "lr": trial.suggest_float("lr", *space.lr, log=True),
        "batch_size": trial.suggest_categorical("batch_size", list(space.batch_sizes)),
        THRESHOLD: trial.suggest_float(THRESHOLD, *space.threshold),
        "focal_alpha": trial.suggest_float("focal_alpha", *space.focal_alpha),
        "focal_gamma": trial.suggest_float("focal_gamma", *space.focal_gamma),
        "max_class_weight": trial.suggest_float("max_class_weight", *space.max_class_weight, log=True),
        "no_finding_fraction": trial.suggest_float("no_finding_fraction", *space.no_finding_fraction),
    }


def apply_params(params: Mapping[str, Any], base: TrainConfig, *, out: str | None = None) -> TrainConfig:
    """The training config of a trial: ``base`` with the tuned fields replaced (pure).

    ``threshold`` is not a training setting and is left out; ``out`` (when given) is the
    trial's run folder.  Unknown parameter names raise :class:`ConfigError`.
    """
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    changes = {k: v for k, v in params.items() if k != THRESHOLD}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ConfigError(f"tuned parameter(s) {unknown} are not TrainConfig fields")
    if "batch_size" in changes:
        changes["batch_size"] = int(changes["batch_size"])
    if out is not None:
        changes["out"] = str(out)
    return dataclasses.replace(base, **changes)


def trial_folder(trial: Trial | FrozenTrial, out_root: Path) -> Path:
    """``OUT/trials/trial_NNNN`` of the trial, or of the trial it retries."""
    if isinstance(trial, Trial):  # a live Trial exposes no system attributes: read its record
        trial = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    original = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    number = trial.number if original is None else original
    return out_root / TRIALS_DIR / f"trial_{number:04d}"


def apply_trial(trial: Trial, base: TrainConfig, space: SearchSpace, out_root: Path) -> TrainConfig:
    """Suggest the parameters and map them onto ``base``; the run resumes a retried one."""
    cfg = apply_params(suggest(trial, space), base, out=str(trial_folder(trial, out_root)))
    return dataclasses.replace(cfg, resume="auto")  # fit: OUT/last.ckpt when it exists


# --------------------------------------------------------------------------- objective
def report_and_maybe_prune(trial: Trial) -> Callable[[int, dict[str, float]], None]:
    """``fit``'s ``on_epoch_end``: report the validation headline, raise ``TrialPruned``."""

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        value = float(metrics[OBJECTIVE])
        if math.isnan(value):
            return  # undefined on this validation set (no class with both outcomes)
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}: {OBJECTIVE} {value:.4f}")

    return on_epoch_end


def macro_f1(targets: np.ndarray, probabilities: np.ndarray, threshold: float) -> float:
    """Mean F1 over the classes with at least one positive; ``(N, C)`` arrays."""
    targets = np.asarray(targets) > 0.5
    predicted = np.asarray(probabilities) >= threshold
    tp = (targets & predicted).sum(axis=0)
    fp = (~targets & predicted).sum(axis=0)
    fn = (targets & ~predicted).sum(axis=0)
    present = targets.sum(axis=0) > 0
    if not present.any():
        return float("nan")
    return float(np.mean(2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])))


def val_macro_f1(best_dir: Path, cfg: TrainConfig, threshold: float) -> float:
    """Validation macro-F1 over the 14 pathologies at ``threshold`` of the exported model
    in ``best_dir``, scored as the app scores it (:func:`training.fitting.loop.predict`, with the
    checkpoint's own test-time policy)."""
    import torch
    from torch.utils.data import DataLoader

    from training.data.run_data import load_data
    from training.fitting.loop import predict
    from training.fitting.runtime import Runtime
    from xray_app.labels import PATHOLOGIES
    from xray_app.model import load_checkpoint

    use_cuda = cfg.device in ("auto", "cuda") and torch.cuda.is_available()
    runtime = Runtime(torch.device("cuda" if use_cuda else "cpu"))
    loaded = load_checkpoint(best_dir, device=str(runtime.device))
    loader = DataLoader(load_data(cfg).val, batch_size=cfg.batch_size, shuffle=False)
    logits, targets, _ = predict(loaded.model, loader, runtime,
                                 mirror_average=loaded.config.mirror_average,
                                 limit_batches=cfg.limit_batches)
    pathologies = slice(0, len(PATHOLOGIES))  # the first 14 outputs in logit order
    return macro_f1(targets.numpy()[:, pathologies], torch.sigmoid(logits).numpy()[:, pathologies],
                    threshold)


def _default_fit() -> FitFunction:
    from training.fitting.loop import fit

    return fit


def objective(
    trial: Trial,
    base: TrainConfig,
    *,
    space: SearchSpace,
    out_root: Path,
    fit_fn: FitFunction | None = None,
    secondary: Secondary | None = val_macro_f1,
) -> float:
    """Train one trial's config with ``fit``; return its best validation mean AUROC over
    the 14 pathologies."""
    fit_fn = fit_fn or _default_fit()
    cfg = apply_trial(trial, base, space, out_root)
    run = Path(cfg.out)
    trial.set_user_attr("run", str(run))
    try:
        best_dir = fit_fn(cfg, on_epoch_end=report_and_maybe_prune(trial))
    except optuna.TrialPruned:
        _tidy(run, keep_best=False)
        raise
    value = best_value(run)
    if secondary is not None:
        trial.set_user_attr(SECONDARY, secondary(Path(best_dir), cfg, trial.params[THRESHOLD]))
    _tidy(run, keep_best=True)
    return value


def best_value(run: Path) -> float:
    """Best validation headline in ``fit``'s ``metrics.csv`` (all epochs, resumed or not)."""
    from training.fitting.run_folder import RunFolder  # imports torch: workers start without it

    return RunFolder(run).best_value(OBJECTIVE)


def _tidy(run: Path, *, keep_best: bool) -> None:
    """A finished trial needs no resume state; a pruned one no exported model either."""
    from training.fitting.run_folder import RunFolder

    RunFolder(run).tidy(keep_best=keep_best)


# --------------------------------------------------------------------------- study
class RetryFailedTrials:
    """``study.optimize`` callback: re-queue a trial that raised, up to ``max_retry`` times.

    It delegates to Optuna's ``RetryHeartbeatStaleTrialCallback``, so a retried trial
    carries ``failed_trial``/``retry_history`` and its intermediate values either way.
    """

    def __init__(self, max_retry: int) -> None:
        self._retry = RetryHeartbeatStaleTrialCallback(
            max_retry=max_retry, inherit_intermediate_values=True
        )

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            self._retry(study, trial)


def make_storage(
    url: str,
    *,
    max_retry: int,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
) -> optuna.storages.BaseStorage:
    """``journal:PATH`` -> journal file storage, anything else -> RDB storage; both with
    heartbeats, and a retry of the trials of workers that stopped sending them."""
    stale_retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return HeartbeatJournalStorage(
            JournalFileBackend(str(path)),
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            stale_trial_callback=stale_retry,
        )
    if "://" not in url:
        raise ConfigError(
            f"--storage {url!r}: expected sqlite:///FILE, an SQLAlchemy URL or journal:PATH"
        )
    from sqlalchemy.exc import IntegrityError, OperationalError

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=stale_retry,
            )
        except (IntegrityError, OperationalError):
            # workers started together race to create the schema of a new database;
            # the loser finds it created a moment later
            if attempt == STORAGE_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class StudySettings:
    """Everything a worker needs besides the training config."""

    study_name: str
    storage: str
    out: Path
    n_trials: int = 20
    timeout: float | None = None
    space: SearchSpace = SearchSpace()
    seed: int = 0
    worker_index: int = 0
    max_retry: int = 1
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 1
    tpe_startup_trials: int = 10


def open_study(settings: StudySettings) -> optuna.Study:
    """Create or load (``load_if_exists``) the study: TPE sampler, median pruner."""
    sampler = optuna.samplers.TPESampler(
        seed=settings.seed * 1000 + settings.worker_index,  # workers must not draw alike
        n_startup_trials=settings.tpe_startup_trials,
        constant_liar=True,  # running trials count as pessimistic results: workers spread out
    )
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=settings.pruner_startup_trials,
        n_warmup_steps=settings.pruner_warmup_epochs,
    )
    return optuna.create_study(
        storage=make_storage(settings.storage, max_retry=settings.max_retry),
        study_name=settings.study_name,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


def run_worker(
    settings: StudySettings,
    base: TrainConfig,
    *,
    fit_fn: FitFunction | None = None,
    secondary: Secondary | None = val_macro_f1,
) -> optuna.Study:
    """One worker: run trials until the study has ``n_trials`` finished ones (or timeout).

    A worker attempts at most ``n_trials`` trials itself, so a study whose every trial
    fails still ends.
    """
    study = open_study(settings)
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def run_trial(trial: Trial) -> float:
        trial.set_user_attr("worker", worker)
        return objective(trial, base, space=settings.space, out_root=settings.out,
                         fit_fn=fit_fn, secondary=secondary)

    study.optimize(
        run_trial,
        n_trials=settings.n_trials,
        timeout=settings.timeout,
        catch=(RuntimeError, ValueError, FloatingPointError, OSError),
        callbacks=[
            optuna.study.MaxTrialsCallback(settings.n_trials, states=FINISHED),
            RetryFailedTrials(settings.max_retry),
        ],
    )
    return study


# --------------------------------------------------------------------------- export
def best_config_text(study: optuna.Study, base: TrainConfig) -> str:
    """``best_config.yaml``: the base config with the best trial's parameters."""
    best = study.best_trial
    cfg = apply_params(best.params, base)
    header = (
        f"# Best of Optuna study {study.study_name!r}: trial {best.number}, "
        f"{OBJECTIVE} {best.value:.4f}\n"
        f"# Use: python -m training.train --config best_config.yaml\n"
        f"# Global threshold of the trial (not a training setting; per-class thresholds are\n"
        f"# chosen on validation by training.evaluate): {best.params[THRESHOLD]:.4f}\n"
    )
    return header + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _plot(name: str, out: Path, draw: Callable[[], Any], notes: dict[str, str]) -> None:
    import matplotlib.pyplot as plt

    try:
        axes = draw()
    except (ValueError, RuntimeError, ZeroDivisionError) as error:
        notes[name] = f"skipped: {error}"
        return
    figure = (axes.flat[0] if isinstance(axes, np.ndarray) else axes).figure
    figure.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    notes[name] = f"{name}.png"


def export_study(study: optuna.Study, base: TrainConfig, out: Path) -> dict[str, Any]:
    """Write the best config, a summary, the trials table and the plots into ``out``."""
    from optuna.visualization import matplotlib as plots

    out.mkdir(parents=True, exist_ok=True)
    counts = {state.name.lower(): 0 for state in TrialState}
    for trial in study.trials:
        counts[trial.state.name.lower()] += 1
    summary: dict[str, Any] = {"study": study.study_name, "trials": counts}
    study.trials_dataframe().to_csv(out / "trials.csv", index=False)
    complete = counts["complete"]
    if complete == 0:
        summary["best"] = None
        (out / "best_params.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
    best = study.best_trial
    summary["best"] = {
        "trial": best.number,
        OBJECTIVE: best.value,
        "params": best.params,
        "user_attrs": best.user_attrs,
    }
    (out / "best_config.yaml").write_text(best_config_text(study, base))
    notes: dict[str, str] = {}
    _plot("optimization_history", out, lambda: plots.plot_optimization_history(study), notes)
    if complete >= 2:
        _plot("param_importances", out, lambda: plots.plot_param_importances(study), notes)
    else:
        notes["param_importances"] = f"skipped: needs >= 2 complete trials, the study has {complete}"
    _plot("parallel_coordinate", out, lambda: plots.plot_parallel_coordinate(study), notes)
    _plot("intermediate_values", out, lambda: plots.plot_intermediate_values(study), notes)
    summary["plots"] = notes
    (out / "best_params.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.tune",
        description="Optuna search over training.train's settings. Every other flag "
        "(--config, --images, --epochs, ...) is passed to training.train's parser.",
    )
    parser.add_argument("--study-name", required=True)
    parser.add_argument("--storage", help="sqlite:///FILE, SQLAlchemy URL or journal:PATH "
                        "(default: sqlite:///OUT/study.db)")
    parser.add_argument("--n-trials", type=int, default=20,
                        help="finished (complete or pruned) trials in the whole study")
    parser.add_argument("--timeout", type=float, default=None, help="seconds, per worker")
    parser.add_argument("--out", dest="tune_out", required=True, type=Path, metavar="DIR",
                        help="folder for the study's outputs and trial runs")
    parser.add_argument("--workers", type=int, default=1,
                        help="start this many worker processes sharing the storage")
    parser.add_argument("--worker-index", type=int, default=0, help="offsets the sampler seed")
    parser.add_argument("--max-retry", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--lr-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"))
    parser.add_argument("--pruner-startup-trials", type=int, default=5)
    parser.add_argument("--pruner-warmup-epochs", type=int, default=1)
    parser.add_argument("--tpe-startup-trials", type=int, default=10)
    parser.add_argument("--no-export", action="store_true", help="(for spawned workers)")
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, TrainConfig, list[str]]:
    """Tune flags, the base training config (training.train's flags), and those flags."""
    args, train_argv = build_parser().parse_known_args(argv)
    base = parse_config(train_argv)
    if not base.validate:
        raise ConfigError("--no-validate: the search scores every trial on the validation split")
    return args, base, list(train_argv)


def settings_from(args: argparse.Namespace, base: TrainConfig) -> StudySettings:
    space = SearchSpace()
    if args.batch_sizes:
        space = dataclasses.replace(space, batch_sizes=tuple(args.batch_sizes))
    if args.lr_range:
        space = dataclasses.replace(space, lr=tuple(args.lr_range))
    storage = args.storage or f"sqlite:///{(args.tune_out / 'study.db').resolve()}"
    return StudySettings(
        study_name=args.study_name, storage=storage, out=args.tune_out,
        n_trials=args.n_trials, timeout=args.timeout, space=space, seed=base.seed,
        worker_index=args.worker_index, max_retry=args.max_retry,
        pruner_startup_trials=args.pruner_startup_trials,
        pruner_warmup_epochs=args.pruner_warmup_epochs,
        tpe_startup_trials=args.tpe_startup_trials,
    )


def spawn_workers(argv: Sequence[str], count: int, storage: str) -> int:
    """Start ``count`` copies of this command as separate processes; wait for all."""
    command = [sys.executable, "-m", "training.tune", *argv, "--workers", "1", "--no-export",
               "--storage", storage]
    processes = [subprocess.Popen([*command, "--worker-index", str(i)]) for i in range(count)]
    return max(process.wait() for process in processes)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the matplotlib plots and the retry callback are "experimental" in Optuna: say it once
    warnings.filterwarnings("once", category=optuna.exceptions.ExperimentalWarning)
    try:
        args, base, _ = parse_args(argv)
        settings = settings_from(args, base)
        settings.out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        if args.workers > 1:
            open_study(settings)  # create storage and study once, before the workers race
            plain = _without(argv, {"--workers", "--worker-index", "--storage"})
            code = spawn_workers(plain, args.workers, settings.storage)
            if code != 0:
                print(f"error: a worker exited with status {code}", file=sys.stderr)
                return code
            study = open_study(settings)
        else:
            study = run_worker(settings, base)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.no_export:
        summary = export_study(study, base, settings.out)
        print(json.dumps(summary, indent=2, default=str))
        print(f"study {settings.study_name!r} in {settings.storage}: outputs in {settings.out} "
              f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return 0


def _without(argv: Sequence[str], flags: set[str]) -> list[str]:
    """``argv`` minus the given single-valued flags (``--flag V`` and ``--flag=V``)."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in flags:
            skip = "=" not in token
            continue
        kept.append(token)
    return kept


if __name__ == "__main__":
    raise SystemExit(main())
