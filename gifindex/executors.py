"""Where the per-model worker (``ingest.sign_entry``) runs: the ways to execute one ingest.

* ``InlineExecutor``: in this process, one model after another (simplest; no isolation).
* ``LocalExecutor``: in ``jobs`` long-lived worker processes (``-j``), each signing one model at a time
  with its share of the threads. A model that hangs past the per-model time limit, or crashes its worker
  (segfault, out-of-memory kill), is recorded as a failure; that worker is restarted and the ingest goes on.
Other executors (Ray) plug in with the same ``map`` signature. Executors only run the worker; the
index commits what they yield.

A worker ends itself when the driver dies, however it died (``kill -9`` included). This module imports
torch (through ``ingest``) only when a model is signed, so a starting worker watches its driver before the
slow imports.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .manifest import ModelEntry

if TYPE_CHECKING:
    from .config import SignatureConfig
    from .ingest import SignResult
    from .probes import Probes


@dataclass
class SignJob:
    """Everything the worker needs besides the model entry (picklable, sent once per worker)."""

    config: "SignatureConfig"
    probes: "Probes"
    device: str = "cpu"
    batch_size: int | None = 32
    known_sha256: dict[str, str] = field(default_factory=dict)   # indexed content hash -> the model's name
    taken_names: dict[str, str] = field(default_factory=dict)   # indexed name -> its weights' sha256

    @property
    def points(self) -> int:
        """Images the worker pushes through a model per signature (what a progress bar counts)."""
        from .methods import passes

        return passes(self.config)

    def run(self, entry: ModelEntry, progress=None) -> SignResult:
        from .ingest import SignResult, sign_entry

        try:
            return sign_entry(entry, self.config, self.probes, device=self.device, batch_size=self.batch_size,
                              known_sha256=self.known_sha256, taken_names=self.taken_names, progress=progress)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - e.g. SystemExit from a model's own code: that model's failure
            return SignResult(name=str(entry.name or entry.ref), ref=str(entry.ref), status="failed",
                              error=f"{type(exc).__name__} raised while loading or signing this model: {exc}")


class Reporter:
    """Progress hooks (no-ops); the CLI draws bars with them."""

    def start(self, total: int) -> None: ...

    def model_start(self, entry: ModelEntry, points: int) -> None: ...

    def points(self, count: int) -> None: ...

    def model_done(self, result: SignResult) -> None: ...

    def close(self) -> None: ...


class InlineExecutor:
    """Run every model in this process, in order."""

    name = "inline"

    def map(self, entries: Iterable[ModelEntry], job: SignJob, reporter: Reporter) -> Iterator[SignResult]:
        for entry in entries:
            reporter.model_start(entry, job.points)
            yield job.run(entry, progress=reporter.points)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
STARTUP_GRACE = 120.0  # seconds a new worker may take to start (imports) before its first model's clock runs


def _exit_with_parent() -> None:
    """End this worker as soon as the driver process is gone, whatever way it went.

    ``daemon=True`` only stops workers when the driver exits cleanly; after SIGKILL or an unhandled SIGTERM a
    worker would wait on its task queue forever (reparented, holding its memory and keeping the resource
    tracker alive). A spawned child has a sentinel on its parent (the end of a pipe that the parent's death
    closes): a daemon thread waits on it, without polling, and exits the process. No-op outside a child."""
    parent = mp.parent_process()
    if parent is None:
        return
    threading.Thread(target=_wait_for_parent_then_exit, args=(parent,), name="gifindex-parent-watch",
                     daemon=True).start()


def _wait_for_parent_then_exit(parent: Any) -> None:
    """Block until ``parent`` (``mp.parent_process()``) has died, then leave at once: nobody reads our results."""
    parent.join()
    os._exit(1)


def _worker_main(pickled_job: bytes, tasks: Any, results: Any, threads: int | None) -> None:
    """Worker process loop: sign entries from ``tasks`` until a None arrives.

    The job comes pickled so that its tensors (and torch) load after the driver watch has started."""
    _exit_with_parent()
    import torch

    job: SignJob = pickle.loads(pickled_job)

    if threads:
        torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when to stop
    while True:
        entry = tasks.get()
        if entry is None:
            return
        results.put(("started", None))
        result = job.run(entry, progress=lambda n: results.put(("points", n)))
        results.put(("result", result))


def _death_reason(process: Any) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed: out of memory?)" if name == "SIGKILL" else ""
        return f"the worker process died with {name}{hint} while loading or signing this model"
    return f"the worker process exited unexpectedly (exit code {code}) while loading or signing this model"


@dataclass
class _Worker:
    """One worker process, its two queues, and the model it is signing (position in the input, start)."""

    process: Any
    tasks: Any
    results: Any
    position: int | None = None
    entry: ModelEntry | None = None
    started: float = 0.0
    running: bool = False  # the worker took the model (its imports and start-up are not the model's time)


class LocalExecutor:
    """Run models in ``jobs`` worker processes, each with a per-model time limit (seconds; None: no limit).

    Each worker signs one model at a time with its share of the CPU threads (``threads``, else the
    ``GIFINDEX_THREADS`` environment variable, else cores // jobs when jobs > 1): torch intra-op threads
    and the OpenMP/MKL variables of the process. Results are yielded in input order, so an ingest commits
    the same shards in the same order for any ``jobs``.
    """

    name = "local"

    def __init__(self, timeout: float | None = 1800.0, threads: int | None = None, jobs: int = 1):
        self.timeout = timeout
        self.jobs = max(1, int(jobs))
        share = max(1, (os.cpu_count() or 1) // self.jobs) if self.jobs > 1 else None
        self.threads = threads or int(os.environ.get("GIFINDEX_THREADS", "0")) or share
        self._ctx = mp.get_context("spawn")

    def _start(self, job: SignJob) -> _Worker:
        tasks, results = self._ctx.Queue(), self._ctx.Queue()
        process = self._ctx.Process(target=_worker_main, args=(pickle.dumps(job), tasks, results, self.threads),
                                    daemon=True, name="gifindex-worker")
        saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
        if self.threads:  # the child reads these when its OpenMP / MKL runtimes start
            os.environ.update({k: str(self.threads) for k in THREAD_VARIABLES})
        try:
            process.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        return _Worker(process, tasks, results)

    @staticmethod
    def _stop(worker: _Worker, kill: bool = False) -> None:
        if kill:
            worker.process.kill()
        else:
            try:
                worker.tasks.put(None)
            except (OSError, ValueError):
                pass
        worker.process.join(timeout=10)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        for q in (worker.tasks, worker.results):
            q.close()
            q.cancel_join_thread()

    def _poll(self, worker: _Worker) -> tuple[list[int], SignResult | None, bool]:
        """(point counts reported, the result if finished, whether the worker must be replaced); a dead or
        timed-out worker gives a failure."""
        counts: list[int] = []
        while True:
            try:
                kind, payload = worker.results.get_nowait()
            except queue.Empty:
                break
            if kind == "result":
                return counts, payload, False
            if kind == "started":
                worker.running, worker.started = True, time.monotonic()
                continue
            counts.append(payload)
        failure = None
        if not worker.process.is_alive():
            try:  # it may have put its result just before exiting
                kind, payload = worker.results.get(timeout=0.2)
                if kind == "result":
                    return counts, payload, True
            except queue.Empty:
                pass
            failure = _death_reason(worker.process)
        elif self.timeout is not None and (time.monotonic() - worker.started >
                                           self.timeout + (0 if worker.running else STARTUP_GRACE)):
            failure = f"timed out after {self.timeout:g} s (per-model limit; raise it with --timeout)"
        if failure is None:
            return counts, None, False
        from .ingest import SignResult

        entry = worker.entry
        assert entry is not None
        return counts, SignResult(name=entry.display_name(), ref=entry.ref, status="failed", error=failure,
                                  seconds=time.monotonic() - worker.started), True

    def map(self, entries: Iterable[ModelEntry], job: SignJob, reporter: Reporter) -> Iterator[SignResult]:
        """Sign ``entries`` on the workers; yield their results in input order.

        Progress goes to ``reporter`` for one model at a time (the next one to be yielded); points that
        other workers report meanwhile are passed on when their model's turn comes."""
        todo = enumerate(entries)
        slots: list[_Worker | None] = [None] * self.jobs
        waiting: dict[int, ModelEntry] = {}      # dispatched, not yet yielded
        finished: dict[int, SignResult] = {}
        points: dict[int, int] = {}
        head, announced, exhausted = 0, -1, False
        try:
            while True:
                for number, worker in enumerate(slots):  # give every idle worker a model
                    if exhausted or (worker is not None and worker.position is not None):
                        continue
                    try:
                        position, entry = next(todo)
                    except StopIteration:
                        exhausted = True
                        break
                    if worker is None:
                        worker = slots[number] = self._start(job)
                    worker.position, worker.entry, worker.started = position, entry, time.monotonic()
                    worker.running = False
                    worker.tasks.put(entry)
                    waiting[position] = entry
                if announced != head and head in waiting:
                    reporter.model_start(waiting[head], job.points)
                    announced = head
                    if points.get(head):
                        reporter.points(points.pop(head))
                if head in finished:
                    waiting.pop(head)
                    yield finished.pop(head)
                    head += 1
                    continue
                if exhausted and not waiting:
                    return
                progressed = False
                for number, worker in enumerate(slots):
                    if worker is None or worker.position is None:
                        continue
                    counts, result, replace = self._poll(worker)
                    position = worker.position
                    if counts:
                        progressed = True
                        if position == announced:
                            reporter.points(sum(counts))
                        else:
                            points[position] = points.get(position, 0) + sum(counts)
                    if result is not None:
                        progressed = True
                        finished[position] = result
                        if replace:
                            self._stop(worker, kill=True)
                            slots[number] = None
                        else:
                            worker.position, worker.entry = None, None
                if not progressed:
                    time.sleep(0.02)
        finally:
            for worker in slots:
                if worker is not None:
                    self._stop(worker, kill=worker.position is not None)


def make_executor(name: str, timeout: float | None = 1800.0, jobs: int = 1, **options: Any):
    """An executor by name: ``inline``, ``local`` (``jobs`` isolated worker processes), or ``ray``."""
    if name == "inline":
        return InlineExecutor()
    if name == "local":
        return LocalExecutor(timeout=timeout, jobs=jobs)
    if name == "ray":
        from .executors_ray import RayExecutor  # optional extra

        return RayExecutor(timeout=timeout, **options)
    from .errors import GifindexError

    raise GifindexError(f"unknown executor {name!r}: expected inline, local or ray")
