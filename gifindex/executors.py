"""Where the per-model worker (``ingest.sign_entry``) runs: the ways to execute one ingest.

* ``InlineExecutor``: in this process, one model after another (simplest; no isolation).
* ``LocalExecutor``: in one long-lived worker process, one model after another. A model that hangs past
  the per-model time limit, or crashes the worker (segfault, out-of-memory kill), is recorded as a
  failure; the worker is restarted and the ingest goes on.
Other executors (Ray) plug in with the same ``map`` signature. Executors only run the worker; the
index commits what they yield.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .ingest import SignResult, sign_entry
from .manifest import ModelEntry

if TYPE_CHECKING:
    from .config import SignatureConfig
    from .probes import Probes


@dataclass
class SignJob:
    """Everything the worker needs besides the model entry (picklable, sent once per worker)."""

    config: "SignatureConfig"
    probes: "Probes"
    device: str = "cpu"
    batch_size: int | None = 32
    known_sha256: frozenset[str] = field(default_factory=frozenset)

    @property
    def points(self) -> int:
        """Images the worker pushes through a model per signature (what a progress bar counts)."""
        from .methods import passes

        return passes(self.config)

    def run(self, entry: ModelEntry, progress=None) -> SignResult:
        return sign_entry(entry, self.config, self.probes, device=self.device, batch_size=self.batch_size,
                          known_sha256=self.known_sha256, progress=progress)


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


def _worker_main(job: SignJob, tasks: Any, results: Any, threads: int | None) -> None:
    """Worker process loop: sign entries from ``tasks`` until a None arrives."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when to stop
    while True:
        entry = tasks.get()
        if entry is None:
            return
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


class LocalExecutor:
    """Run models in a separate worker process with a per-model time limit (seconds; None: no limit)."""

    name = "local"

    def __init__(self, timeout: float | None = 1800.0, threads: int | None = None):
        self.timeout = timeout
        self.threads = threads or int(os.environ.get("GIFINDEX_THREADS", "0")) or None
        self._ctx = mp.get_context("spawn")

    def _start(self, job: SignJob):
        tasks, results = self._ctx.Queue(), self._ctx.Queue()
        process = self._ctx.Process(target=_worker_main, args=(job, tasks, results, self.threads), daemon=True,
                                    name="gifindex-worker")
        process.start()
        return process, tasks, results

    @staticmethod
    def _stop(worker, kill: bool = False) -> None:
        process, tasks, results = worker
        if kill:
            process.kill()
        else:
            try:
                tasks.put(None)
            except (OSError, ValueError):
                pass
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()
        for q in (tasks, results):
            q.close()
            q.cancel_join_thread()

    def map(self, entries: Iterable[ModelEntry], job: SignJob, reporter: Reporter) -> Iterator[SignResult]:
        worker = None
        try:
            for entry in entries:
                if worker is None:
                    worker = self._start(job)
                process, tasks, results = worker
                reporter.model_start(entry, job.points)
                started = time.monotonic()
                tasks.put(entry)
                while True:
                    try:
                        kind, payload = results.get(timeout=0.2)
                    except queue.Empty:
                        failure = None
                        if not process.is_alive():
                            failure = _death_reason(process)
                        elif self.timeout is not None and time.monotonic() - started > self.timeout:
                            failure = (f"timed out after {self.timeout:g} s (per-model limit; raise it with "
                                       "--timeout)")
                        if failure is None:
                            continue
                        self._stop(worker, kill=True)
                        worker = None
                        yield SignResult(name=entry.display_name(), ref=entry.ref, status="failed",
                                         error=failure, seconds=time.monotonic() - started)
                        break
                    if kind == "points":
                        reporter.points(payload)
                        continue
                    yield payload
                    break
        finally:
            if worker is not None:
                self._stop(worker, kill=False)


def make_executor(name: str, timeout: float | None = 1800.0, **options: Any):
    """An executor by name: ``inline``, ``local`` (isolated worker process), or ``ray``."""
    if name == "inline":
        return InlineExecutor()
    if name == "local":
        return LocalExecutor(timeout=timeout)
    if name == "ray":
        from .executors_ray import RayExecutor  # optional extra

        return RayExecutor(timeout=timeout, **options)
    from .errors import GifindexError

    raise GifindexError(f"unknown executor {name!r}: expected inline, local or ray")
