"""Resumable cohorts, engine-agnostic: done records, per-slide locks, shards, the cohort summary, engines.

A verb's run over a cohort is a :class:`CohortRun` (plan, run, records, cohort.json, the verb's
table rebuilt). A slide's work (tiling one slide, extracting one bag) runs through :func:`run_cohort`:
skipped when its done record (``OUT/done/<slide_id>.json``) matches the inputs and the
settings, otherwise done under a lock (``OUT/locks/<slide_id>.lock``) by a local process
pool or by Ray, and recorded when its outputs are complete. ``OUT/cohort.json`` is
rebuilt from the records as slides finish. This package never imports torch; Ray only
when chosen.
"""

from .driver import CohortRun
from .engines import ENGINES, CohortPlan, CohortResult, SlideJob, connect_ray, plan_cohort, run_cohort
from .locks import LockError, SlideLock, acquire_lock, waiting_lock
from .records import SettingsChangedError, done_records, inputs_stamp, read_done, settings_hash, write_done
from .shard import parse_shard, select_shard
from .summary import CohortSummary

__all__ = [
    "ENGINES",
    "LockError",
    "CohortPlan",
    "CohortRun",
    "CohortResult",
    "CohortSummary",
    "SettingsChangedError",
    "SlideJob",
    "SlideLock",
    "acquire_lock",
    "connect_ray",
    "done_records",
    "inputs_stamp",
    "parse_shard",
    "plan_cohort",
    "read_done",
    "run_cohort",
    "select_shard",
    "settings_hash",
    "waiting_lock",
    "write_done",
]
