"""One run of a verb over a cohort: the skeleton that ``tile`` and ``extract`` share.

:class:`CohortRun` plans (done slides skipped, other settings refused: :func:`plan_cohort`),
runs the slides to do (a local process pool or Ray tasks: :func:`run_cohort`; or Ray
actors: :func:`run_actor_cohort`), counts each result in ``OUT/cohort.json`` as it comes,
then has the verb rebuild its table (``manifest.csv``, ``index.csv``) from the done
records of OUT and rewrites ``cohort.json``. A verb gives only its per-slide work and
what it writes from the done records.

The outputs of a done record are checked (``records.outputs_problem``: an h5 file opened)
once per run: the rebuild reuses the verdicts of the plan (``checks``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..utils.atomic import remove_stale_temps
from .engines import CohortResult, SlideJob, plan_cohort, run_actor_cohort, run_cohort
from .locks import DEFAULT_TIMEOUT_S, waiting_lock
from .records import DONE, FAILED, done_records
from .shard import select_shard
from .summary import CohortSummary

T = TypeVar("T")


class CohortRun:
    """A verb's run over ``jobs`` (their shard) into ``out``: ``plan``, then :meth:`run` (or
    :meth:`run_actors`), then :meth:`finish`. The results of this run are kept by status: ``done``,
    ``failed`` and ``elsewhere`` (skipped or locked: done, or being done, by another job sharing OUT).
    ``started``: when the verb started (default: now)."""

    def __init__(
        self,
        out: str | Path,
        step: str,
        jobs: Sequence[SlideJob],
        settings: dict[str, Any],
        *,
        redo: bool = False,
        shard: tuple[int, int] | None = None,
        engine: str = "local",
        lock_timeout: float = DEFAULT_TIMEOUT_S,
        temp_folders: Iterable[str] = (),
        started: float | None = None,
    ) -> None:
        self.started = started or time.time()  # with redo: records older than this are done again
        self.out, self.settings, self.redo, self.lock_timeout = Path(out), settings, redo, lock_timeout
        self.out.mkdir(parents=True, exist_ok=True)
        for folder in (*temp_folders, DONE, FAILED):  # of writes killed mid-way (dead pid, > 60 s)
            remove_stale_temps(self.out / folder)
        self.jobs = select_shard(jobs, [j.slide_id for j in jobs], shard)
        self.checks: dict = {}  # verdicts on the outputs of done records, reached once per run
        self.plan = plan_cohort(self.jobs, self.out, settings, redo, self.checks)
        self.summary = CohortSummary(self.out, step, [j.slide_id for j in self.jobs])
        self.summary.skipped, self.summary.engine = len(self.plan.skipped), engine
        self.summary.write()
        self.engine = engine
        self.done: list[CohortResult] = []
        self.failed: list[CohortResult] = []
        self.elsewhere: list[CohortResult] = []

    @property
    def todo(self) -> list[SlideJob]:
        return self.plan.todo

    def run(self, fn: Callable, args: tuple = (), **engine_options: Any) -> Iterator[CohortResult]:
        """``fn(job, *args)`` on every slide to do (local pool or Ray tasks; ``engine_options`` as
        :func:`run_cohort` takes them), each result counted before it is yielded."""
        return self._count(
            run_cohort(
                self.todo,
                fn,
                self.out,
                self.settings,
                args=args,
                engine=self.engine,
                redo=self.redo,
                since=self.started,
                lock_timeout=self.lock_timeout,
                **engine_options,
            )
        )

    def run_actors(self, actor_cls: type, init_args: tuple, **options: Any) -> Iterator[CohortResult]:
        """The slides to do on a pool of Ray actors (:func:`run_actor_cohort`), each result counted."""
        return self._count(
            run_actor_cohort(
                self.todo,
                actor_cls,
                init_args,
                self.out,
                self.settings,
                redo=self.redo,
                since=self.started,
                lock_timeout=self.lock_timeout,
                **options,
            )
        )

    def _count(self, results: Iterable[CohortResult]) -> Iterator[CohortResult]:
        for result in results:
            {"done": self.done, "failed": self.failed}.get(result.status, self.elsewhere).append(result)
            self.summary.write()
            yield result

    def finish(self, rebuild: Callable[[dict[str, dict[str, Any]]], T], lock: str | None = None) -> T:
        """``rebuild(records)``: the verb's table from every done record of OUT whose outputs match it (under the
        lock of the file ``lock`` of OUT, when jobs sharing OUT rewrite it); then ``cohort.json``."""
        with waiting_lock(self.out, lock, self.lock_timeout) if lock else contextlib.nullcontext():
            records = done_records(self.out, rejected=self.summary.rejected, checks=self.checks)
            value = rebuild(records)
        self.summary.write()
        return value
