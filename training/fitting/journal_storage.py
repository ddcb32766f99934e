"""Optuna's journal storage with heartbeats, so a dead worker's trial is retried there too.

Optuna 5 gives heartbeats only to its RDB storage: a worker that dies mid-trial
(``kill -9``, pre-emption, a node lost) leaves its trial RUNNING in a journal file for
ever.  :class:`HeartbeatJournalStorage` adds Optuna's own heartbeat interface
(``optuna.storages._heartbeat.BaseHeartbeat``) to ``JournalStorage``, so the same Optuna
machinery as for RDB applies unchanged: while a trial runs, its worker's heartbeat
thread records the time every ``heartbeat_interval`` seconds, and each worker, before
it starts a trial, fails the RUNNING trials whose last heartbeat is older than
``grace_period`` and hands them to the stale-trial callback (a retry).

A heartbeat is the trial system attribute :data:`HEARTBEAT_ATTR`: the worker's wall
clock in Unix seconds (one journal entry per interval).  A journal has no server clock,
so workers on several machines need synchronised clocks (NTP), and ``grace_period``
must exceed the worst clock difference plus one interval.  A trial's silence counts from
the later of its last heartbeat and its start.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from optuna.storages import JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT_ATTR = "heartbeat_unix_s"

StaleTrialCallback = Callable[[optuna.Study, FrozenTrial], None]


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """``JournalStorage`` whose RUNNING trials are failed after ``grace_period`` s of silence."""

    def __init__(
        self,
        backend: BaseJournalBackend,
        *,
        heartbeat_interval: int,
        grace_period: int,
        stale_trial_callback: StaleTrialCallback | None = None,
    ) -> None:
        if heartbeat_interval <= 0 or grace_period <= heartbeat_interval:
            raise ValueError(
                f"need 0 < heartbeat_interval < grace_period, got {heartbeat_interval} and {grace_period}"
            )
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # the later of its last heartbeat and its start: a retried trial inherits the
            # failed trial's system attributes, old heartbeat included
            times = [float(trial.system_attrs.get(HEARTBEAT_ATTR, "-inf"))]
            if trial.datetime_start is not None:
                times.append(trial.datetime_start.timestamp())
            if now - max(times) > self.grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> StaleTrialCallback | None:
        return self.stale_trial_callback
