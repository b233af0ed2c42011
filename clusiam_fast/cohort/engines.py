"""Run one function per slide, locally (a process pool) or on Ray, yielding results as slides finish.

``run_cohort(jobs, fn, ...)`` first sorts the jobs with their done records: done ones
(same inputs, same settings) are skipped and counted; done with other settings is refused
(:class:`SettingsChangedError`) unless ``redo``. Every other slide runs :func:`do_slide`
wherever the engine puts it (so that the worker, not the driver, writes the outputs and
the records, and a killed driver loses nothing finished):

1. take the slide's lock (``locks.py``); held by a live job -> ``locked`` (left to it);
2. look at the done record again (another job may have finished it meanwhile) -> ``skipped``;
3. ``fn(job, *args)`` returns ``(True, result, outputs)`` or ``(False, reason, [])``; its
   outputs are written atomically by ``fn``; then the done (or failure) record is written.

Engines: ``local`` runs ``workers`` forkserver processes (1: in this process; the pool is
kept for the next cohort of the process; a CLI starts the fork server first thing, with
:func:`start_fork_server`, so that its imports overlap the driver's); ``ray``
runs one task per slide (``cpus_per_task`` / ``gpus_per_task`` resources), on the cluster at
``ray_address`` (``auto``: the one ``ray start`` made here) or on a local instance started
with ``workers x cpus_per_task`` CPUs. A Ray worker that dies mid-slide is retried once
(``max_retries``), then the slide is failed; its lock (dead pid) is taken over.
Local workers exit as soon as the driver dies (kill -9 included), so that none is left idle.

A done slide is skipped only when its outputs are there and open (``records.outputs_problem``);
one whose record is malformed or does not match its outputs is named and done again.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .locks import DEFAULT_TIMEOUT_S, LockError, acquire_lock
from .records import (
    SettingsChangedError,
    done_state,
    inputs_stamp,
    note,
    outputs_problem,
    read_record,
    record_path,
    settings_difference,
    write_done,
    write_failed,
)

ENGINES = ("local", "ray")
RAY_CONNECT_TIMEOUT_S = 10.0  # a Ray head that does not let a driver join fails within this (after the probes)
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # preface + SETTINGS
RAY_HINT = 'the Ray engine needs Ray: pip install ".[ray]" (or use --engine local)'


@dataclass(frozen=True)
class SlideJob:
    """One slide's work: its id, the main input (named in messages), every input file deciding "done", and
    its own settings ((key, value) pairs over the cohort's: e.g. a per-slide mpp)."""

    slide_id: str
    path: str
    inputs: tuple[str, ...] = ()
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        return self.inputs or (self.path,)

    def settings_of(self, shared: dict) -> dict:
        """The settings of this slide: the cohort's, with its own over them."""
        return {**shared, **dict(self.settings)}

    @property
    def per_slide(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.settings)


@dataclass
class CohortResult:
    """What happened to one slide: status ``done``, ``failed``, ``skipped`` or ``locked``."""

    job: SlideJob
    status: str
    value: Any = None  # done: fn's result; failed: the reason
    seconds: float = 0.0
    worker: dict[str, Any] = field(default_factory=dict)  # host and pid that did it


@dataclass
class CohortPlan:
    """The jobs to run and those skipped as done, from :func:`plan_cohort`."""

    todo: list[SlideJob]
    skipped: list[SlideJob]
    inputs_changed: list[SlideJob]


def plan_cohort(
    jobs: Sequence[SlideJob], out: str | Path, settings: dict, redo: bool = False, checks: dict | None = None
) -> CohortPlan:
    """Split ``jobs`` into to-do and done; refuse done slides with other settings unless ``redo``.

    Each slide is compared on its own settings (:meth:`SlideJob.settings_of`). A done slide whose
    record is malformed or whose outputs are missing, do not open or disagree with it is named and
    done again (``checks``: where the verdicts on outputs are kept, see ``records.outputs_problem``)."""
    todo, skipped, changed_inputs, changed = [], [], [], []
    for job in jobs:
        path = record_path(out, job.slide_id)
        record, problem = read_record(path)
        mine = job.settings_of(settings)
        state = done_state(record, inputs_stamp(job.files, fingerprints=False), mine, job.per_slide)
        if state == "done" and not redo:
            problem = outputs_problem(out, record, checks)
            if problem is None:
                skipped.append(job)
                continue
        if problem:
            note(f"done record {path}: {problem}; {job.slide_id} is done again")
        todo.append(job)
        if state == "inputs-changed":
            changed_inputs.append(job)
        elif state == "settings-changed":
            changed.append((job, record))
    if changed and not redo:
        job, record = changed[0]
        raise SettingsChangedError(
            f"{len(changed)} slide(s) in {out} were done with other settings (e.g. {job.slide_id}: "
            f"{settings_difference(record['settings'], job.settings_of(settings))}); pass --redo to do them again "
            "with these settings, or choose another --out"
        )
    return CohortPlan(todo, skipped, changed_inputs)


def do_slide(
    fn: Callable, job: SlideJob, out: str, settings: dict, since: float | None, lock_timeout: float, args: tuple
) -> CohortResult:
    """Lock, re-check, run ``fn`` and record one slide (runs in the worker). ``since``: redo records older than it."""
    who = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        lock = acquire_lock(out, job.slide_id, lock_timeout)
    except LockError as error:  # a lock path that cannot be taken over (e.g. a folder with files in it)
        write_failed(out, job.slide_id, job.path, str(error))
        return CohortResult(job, "failed", str(error), worker=who)
    if lock is None:
        return CohortResult(job, "locked", "another job holds its lock", worker=who)
    with lock:
        mine = job.settings_of(settings)
        path = record_path(out, job.slide_id)
        record, problem = read_record(path)
        if done_state(record, inputs_stamp(job.files, fingerprints=False), mine, job.per_slide) == "done":
            problem = outputs_problem(out, record)
            if problem is None and (since is None or float(record.get("time", 0)) >= since):
                return CohortResult(job, "skipped", record.get("result"), worker=who)
        if problem:  # not a done slide: its record goes (a failure must not leave it counted as done)
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                path.unlink()
        start = time.perf_counter()
        stamp = inputs_stamp(job.files)  # before reading: a file changed while read is redone next time
        unused: list[str] = []
        try:
            ok, value, outputs, *rest = fn(job, *args)
            unused = list(rest[0]) if rest else []  # per-slide settings this slide did not use
        except Exception as error:  # one bad slide never stops the cohort
            ok, value, outputs = False, f"{type(error).__name__}: {error}", []
        seconds = time.perf_counter() - start
        if ok:
            recorded = {k: (None if k in unused and k in job.per_slide else v) for k, v in mine.items()}
            write_done(out, job.slide_id, stamp, recorded, value, outputs, seconds)
        else:
            write_failed(out, job.slide_id, job.path, str(value))
        return CohortResult(job, "done" if ok else "failed", value, seconds, who)


def run_cohort(
    jobs: Iterable[SlideJob],
    fn: Callable,
    out: str | Path,
    settings: dict,
    *,
    args: tuple = (),
    engine: str = "local",
    workers: int = 1,
    redo: bool = False,
    since: float | None = None,
    lock_timeout: float = DEFAULT_TIMEOUT_S,
    ray_address: str | None = None,
    cpus_per_task: float = 1.0,
    gpus_per_task: float = 0.0,
    max_retries: int = 1,
    preload: Sequence[str] = (),
) -> Iterator[CohortResult]:
    """Run ``fn`` on every job not done yet (see the module docstring); yields as slides finish.

    ``fn`` must be a module-level function (it is pickled to the workers); ``preload``: modules
    the local fork server imports once. ``since`` (with ``redo``): the run's start time.
    """
    if engine not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    jobs = list(jobs)
    out = str(out)
    since = (since or time.time()) if redo else None
    call = (out, settings, since, lock_timeout, args)
    if engine == "ray":
        yield from _run_ray(jobs, fn, call, workers, ray_address, cpus_per_task, gpus_per_task, max_retries)
    elif workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield do_slide(fn, job, *call)
    else:
        yield from _run_pool(jobs, fn, call, workers, preload)


def _died(job: SlideJob, out: str, what: str) -> CohortResult:
    reason = f"the {what} died while doing it (killed, out of memory, or a crash in a native library)"
    write_failed(out, job.slide_id, job.path, reason)
    return CohortResult(job, "failed", reason)


_POOLS: dict[tuple, Any] = {}  # (workers, preload) -> a live process pool, reused by later cohorts of this process


def _local_pool(workers: int, preload: Sequence[str]):
    """A forkserver pool of ``workers`` processes, kept for the next cohort of this process (as Ray keeps
    its workers), so that a notebook or a benchmark tiling cohort after cohort pays the imports once."""
    from concurrent.futures import ProcessPoolExecutor

    key = (workers, tuple(preload))
    pool = _POOLS.get(key)
    if pool is None or getattr(pool, "_broken", False):
        # not fork: cuCIM/OpenSlide threads and handles must not be copied into children
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__, *preload])
        pool = _POOLS[key] = ProcessPoolExecutor(
            workers, mp_context=context, initializer=exit_with, initargs=(os.getpid(),)
        )
        if len(_POOLS) == 1:
            atexit.register(_close_pools)
    return pool


def start_fork_server(preload: Sequence[str]) -> None:
    """Start the local pool's fork server now, importing ``preload`` (and this module) while the caller goes
    on with its own imports and planning; a pool made later forks its workers from it. Does not wait."""
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload([__name__, *preload])
    forkserver.ensure_running()


def exit_with(driver_pid: int) -> None:
    """Pool worker initializer: exit as soon as the driver dies (kill -9 included).

    A worker's parent is the fork server, which lives as long as any worker does (each holds
    its alive pipe), and the resource tracker as long as both: so the worker must watch the
    driver itself. A pidfd (Linux >= 5.3) wakes at its death; elsewhere it is polled."""
    threading.Thread(target=_watch, args=(driver_pid,), name="driver-watch", daemon=True).start()


def _watch(pid: int) -> None:
    try:
        select.select([os.pidfd_open(pid)], [], [])  # readable once the process has ended
    except (AttributeError, OSError):  # no pidfd here: poll
        while _running(pid):
            time.sleep(1.0)
    os._exit(1)


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a killed driver not yet reaped is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _POOLS.clear()


def _run_pool(jobs, fn, call, workers, preload) -> Iterator[CohortResult]:
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    key = (workers, tuple(preload))
    pool = _local_pool(workers, preload)
    futures = {pool.submit(do_slide, fn, job, *call): job for job in jobs}
    try:
        for future in as_completed(futures):
            try:
                yield future.result()
            except BrokenProcessPool:
                _POOLS.pop(key, None)
                yield _died(futures[future], call[0], "worker process")
    finally:  # the caller stopped early (Ctrl-C, an error): drop what has not started
        for future in futures:
            future.cancel()


def import_ray():
    """``ray``, or ImportError with the install hint."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(RAY_HINT) from error
    return ray


def _probe(address: str) -> None:
    """Fail fast when nothing listens at an explicit ``host:port`` (5 s), or when what listens does not speak
    gRPC as a Ray head does (3 s): Ray itself retries an address for minutes, with a warning every 5 s."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"--ray-address must be host:port (the head's GCS port, 6379 by default) or auto, got {address!r}"
        )
    try:
        conn = socket.create_connection((host, int(port)), timeout=5.0)
    except OSError as error:
        raise ConnectionError(
            f"no Ray cluster answers at --ray-address {address} ({error}); start one there with "
            "`ray start --head`, or leave --ray-address out to start a local instance"
        ) from None
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        conn.close()
        return  # a TLS head does not answer plain HTTP/2: let Ray judge
    with conn:
        reply = b""
        try:
            conn.settimeout(3.0)
            conn.sendall(_HTTP2_HELLO)
            while len(reply) < 9 and (chunk := conn.recv(9 - len(reply))):
                reply += chunk
        except OSError:
            pass
    if len(reply) < 9 or reply[3] != 4:  # a gRPC server's first frame is SETTINGS (type 4)
        raise ConnectionError(
            f"what listens at --ray-address {address} is not a Ray head (no gRPC answer within 3 s); give the "
            "head's GCS port (`ray start --head` prints it; 6379 by default), or leave --ray-address out to start "
            "a local instance"
        )


@contextlib.contextmanager
def _quiet_ray():
    """Ray's Python warnings off while a driver joins (its C++ core's too, unless RAY_BACKEND_LOG_LEVEL is set):
    a join that fails then gives one line, ours, instead of a warning every 5 s."""
    import logging

    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # read when the core starts: for the session
    logger = logging.getLogger("ray")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def connect_ray(address: str | None, num_cpus: float, num_gpus: float, timeout_s: float = RAY_CONNECT_TIMEOUT_S):
    """Initialise Ray once: join ``address`` (a one-line error within ``timeout_s`` when it does not let us
    join, Ray's logging quiet until then) or start a local instance with these resources. Says on the
    console how long that took (Ray's import included)."""
    start = time.perf_counter()
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if not address:  # in this thread: Ray's processes die with the thread that started them (PDEATHSIG)
        ray.init(
            address="local",
            num_cpus=max(1, int(num_cpus)),
            num_gpus=int(num_gpus),
            include_dashboard=False,
            configure_logging=False,
        )
        note(
            f"started a local Ray instance ({max(1, int(num_cpus))} CPUs) in {time.perf_counter() - start:.1f} s; "
            "to pay this once, not per command: `ray start --head`, then --ray-address auto"
        )
        return ray
    _probe(address)
    errors: list[BaseException] = []

    def join() -> None:  # a driver joining a cluster starts no process; Ray retries an address for minutes
        try:
            ray.init(address=address, configure_logging=False)
        except BaseException as error:  # handed to the caller
            errors.append(error)

    with _quiet_ray():
        thread = threading.Thread(target=join, name="ray-connect", daemon=True)
        thread.start()
        thread.join(timeout_s)
    if thread.is_alive():
        raise ConnectionError(
            f"the Ray cluster at --ray-address {address} did not let this driver join within {timeout_s:.0f} s: is "
            "it a Ray head (`ray start --head`; `ray status` there tells)? If it uses token authentication (Ray's "
            "default), set RAY_AUTH_MODE=token here, with its token in RAY_AUTH_TOKEN or ~/.ray/auth_token. Or leave "
            "--ray-address out to start a local instance"
        )
    if errors:
        first = str(errors[0]).strip().splitlines()
        raise ConnectionError(
            f"cannot join the Ray cluster at --ray-address {address}: {first[0] if first else type(errors[0]).__name__}"
        ) from errors[0]
    note(f"joined the Ray cluster at {address} in {time.perf_counter() - start:.1f} s")
    return ray


def _run_ray(jobs, fn, call, workers, address, cpus, gpus, max_retries) -> Iterator[CohortResult]:
    if not jobs:
        return
    ray = connect_ray(address, workers * cpus, workers * gpus)
    task = ray.remote(do_slide).options(num_cpus=cpus, num_gpus=gpus, max_retries=max_retries)
    fn_ref = ray.put(fn)
    pending = {task.remote(fn_ref, job, *call): job for job in jobs}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError):
            result = _died(job, call[0], "Ray worker")
        except ray.exceptions.RayError as error:  # do_slide catches fn's errors: this is Ray's own
            reason = f"Ray could not run it: {str(error)[-500:]}"
            write_failed(call[0], job.slide_id, job.path, reason)
            result = CohortResult(job, "failed", reason)
        yield result


def run_actor_cohort(
    jobs: Iterable[SlideJob],
    actor_cls: type,
    init_args: tuple,
    out: str | Path,
    settings: dict,
    *,
    actors: int | None = None,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
    ray_address: str | None = None,
    num_cpus: float = 2.0,
    redo: bool = False,
    since: float | None = None,
    lock_timeout: float = DEFAULT_TIMEOUT_S,
    max_restarts: int = 1,
) -> Iterator[CohortResult]:
    """Run jobs on a pool of Ray actors ``actor_cls(*init_args)`` (each holding e.g. a model); yields as they finish.

    The actor's ``run(job, settings, since, lock_timeout)`` must return :func:`do_slide`'s result (so it
    locks, records and writes its outputs itself). ``actors``: default one per GPU of the cluster
    with ``gpus_per_actor`` > 0, else 1. Each actor has at most two slides queued; an actor that
    dies is restarted (``max_restarts``) and its slide failed (a re-run does it).
    """
    jobs = list(jobs)
    if not jobs:
        return
    ray = connect_ray(ray_address, num_cpus, 0)
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("GPU", 0) // gpus_per_actor)) if gpus_per_actor else 1
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < actors * cpus_per_actor + 1:  # the read tasks would wait forever for a free CPU
        raise ValueError(
            f"the Ray cluster has {cpus:g} CPUs: {actors} actor(s) of {cpus_per_actor:g} CPU need at least "
            f"{actors * cpus_per_actor + 1:g} (one more for the read tasks); use fewer --actors"
        )
    since = (since or time.time()) if redo else None
    remote = ray.remote(actor_cls).options(
        num_cpus=cpus_per_actor, num_gpus=gpus_per_actor, max_restarts=max_restarts, max_task_retries=0
    )
    pool = [remote.remote(*init_args) for _ in range(min(actors, len(jobs)))]
    queue = list(reversed(jobs))
    pending: dict[Any, tuple[SlideJob, Any]] = {}

    def feed(actor) -> None:
        if queue:
            job = queue.pop()
            pending[actor.run.remote(job, settings, since, lock_timeout)] = (job, actor)

    for actor in pool:
        feed(actor)
        feed(actor)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job, actor = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError):
                result = _died(job, str(out), "Ray actor")
            except ray.exceptions.RayError as error:
                reason = f"Ray could not run it: {str(error)[-500:]}"
                write_failed(str(out), job.slide_id, job.path, reason)
                result = CohortResult(job, "failed", reason)
            feed(actor)
            yield result
    finally:
        for actor in pool:
            ray.kill(actor)
