"""Ray executor: the same per-model worker (``SignJob.run``) as one Ray task per model, across a cluster.

The driver (the process running ``Index.ingest``) submits one task per model, keeps at most
``max_in_flight`` of them outstanding (default: twice the cluster's slots for the task's resources), and
yields each ``SignResult`` as it completes (completion order, not submission order); the index commits
them in shards exactly as for the local executor, so an interrupted ingest resumes and failures are
recorded the same way. A task whose worker process dies (segfault, out-of-memory kill) or that runs past
``timeout`` seconds (measured from when it was handed a slot; force-cancelled) becomes a failed result.

Every worker needs: the same Python with gifindex (and torch, timm, ...) installed, and read access to
the model files and weight caches named by the entries (a shared filesystem or identical caches). The
job (configuration and probes) is put in Ray's object store once and shared by every task.

An explicit cluster address is checked with a plain TCP connection first: Ray itself retries an unreachable
one for minutes, logging each attempt, where the user should get one line at once.
"""
from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import GifindexError
from .executors import Reporter, SignJob
from .ingest import SignResult
from .manifest import ModelEntry


def _import_ray():
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the environment
        raise GifindexError("the ray executor needs Ray: pip install 'gifindex[ray]'") from None
    return ray


CONNECT_TIMEOUT = 10.0  # seconds to open a TCP connection to a cluster address before calling it unreachable


def _endpoint(address: str | None) -> tuple[str, int] | None:
    """(host, port) of an explicit cluster address, ``host:port`` or ``ray://host:port`` (IPv6 in brackets).

    None where Ray finds the cluster itself (no address, ``auto``, ``local``) or for a form not read here:
    Ray then judges the address as before."""
    if not address or address in ("auto", "local"):
        return None
    text = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _check_reachable(address: str | None, timeout: float) -> None:
    """Raise GifindexError unless something accepts TCP connections at ``address`` within ``timeout`` s."""
    endpoint = _endpoint(address)
    if endpoint is None:
        return
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            pass
    except OSError as exc:
        raise GifindexError(f"cannot reach the Ray cluster at {address} ({_why(exc, timeout)}): check --address "
                            "(or RAY_ADDRESS) and that the cluster is running") from None


def _why(exc: OSError, timeout: float) -> str:
    """A failed connection in a few words."""
    if isinstance(exc, socket.timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    return (exc.strerror or type(exc).__name__).lower()


def _sign_task(job: SignJob, entry: ModelEntry, threads: int) -> SignResult:
    """Body of one Ray task: the local worker's function, unchanged."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return job.run(entry)


class RayExecutor:
    """Run each model as a Ray task (``num_gpus`` per task when the job's device is cuda)."""

    name = "ray"

    def __init__(self, timeout: float | None = 1800.0, address: str | None = None, num_cpus: float = 1,
                 num_gpus: float | None = None, max_in_flight: int | None = None,
                 runtime_env: dict[str, Any] | None = None, init_options: dict[str, Any] | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT):
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.max_in_flight = max_in_flight
        self.runtime_env = runtime_env
        self.init_options = dict(init_options or {})

    # ------------------------------------------------------------------------------------------------
    def _ensure_ray(self):
        """Connect to ``address`` (or start a local Ray) unless the caller already did; True if we did.

        An address that takes no TCP connection fails here in ``connect_timeout`` seconds, not in Ray's
        minutes of retries; a cluster Ray cannot join (a Ray error at connection) fails in one line too."""
        ray = _import_ray()
        if ray.is_initialized():
            return ray, False
        _check_reachable(self.address, self.connect_timeout)
        options = {"ignore_reinit_error": True, "log_to_driver": False, **self.init_options}
        if self.runtime_env:
            options["runtime_env"] = self.runtime_env
        try:
            ray.init(address=self.address, **options)
        except ConnectionError as exc:
            where = f" at {self.address}" if self.address else ""
            raise GifindexError(f"cannot connect to the Ray cluster{where}: {exc}") from None
        return ray, True

    def _slots(self, ray, num_gpus: float) -> int:
        resources = ray.cluster_resources()
        slots = int(resources.get("CPU", 1) // max(self.num_cpus, 1e-9)) if self.num_cpus else 1 << 30
        if num_gpus:
            slots = min(slots, int(resources.get("GPU", 0) // num_gpus))
            if slots < 1:
                raise GifindexError("--device cuda with the ray executor: the Ray cluster reports no GPUs")
        return max(1, slots)

    def map(self, entries: Iterable[ModelEntry], job: SignJob, reporter: Reporter) -> Iterator[SignResult]:
        ray, started_here = self._ensure_ray()
        num_gpus = self.num_gpus if self.num_gpus is not None else (1 if str(job.device).startswith("cuda") else 0)
        threads = max(1, int(self.num_cpus)) if self.num_cpus else 0
        task = ray.remote(_sign_task).options(num_cpus=self.num_cpus, num_gpus=num_gpus, max_retries=0,
                                              retry_exceptions=False, name="gifindex-sign")
        slots = self._slots(ray, num_gpus)
        limit = self.max_in_flight or 2 * slots
        job_ref = ray.put(job)
        todo = deque(entries)
        running: dict[Any, tuple[ModelEntry, float]] = {}  # ref -> (entry, submitted)
        started: dict[Any, float] = {}                       # ref -> when it got a slot (estimate)
        try:
            while todo or running:
                while todo and len(running) < limit:
                    entry = todo.popleft()
                    running[task.remote(job_ref, entry, threads)] = (entry, time.monotonic())
                # The oldest `slots` outstanding tasks are the ones running; start their clocks.
                now = time.monotonic()
                for ref in list(running)[:slots]:
                    started.setdefault(ref, now)
                done, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
                for ref in done:
                    entry, submitted = running.pop(ref)
                    began = started.pop(ref, submitted)
                    yield self._collect(ray, ref, entry, began, job, reporter)
                if self.timeout is not None:
                    now = time.monotonic()
                    for ref, began in list(started.items()):
                        if ref in running and now - began > self.timeout:
                            entry, _ = running.pop(ref)
                            started.pop(ref)
                            ray.cancel(ref, force=True)
                            reporter.model_start(entry, job.points)
                            yield SignResult(name=entry.display_name(), ref=entry.ref, status="failed",
                                             error=f"timed out after {self.timeout:g} s (per-model limit; raise "
                                                   "it with --timeout)", seconds=now - began)
        finally:
            for ref in running:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            if started_here:
                ray.shutdown()

    @staticmethod
    def _collect(ray, ref, entry: ModelEntry, began: float, job: SignJob, reporter: Reporter) -> SignResult:
        reporter.model_start(entry, job.points)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the worker function raised (it should not)
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            return SignResult(name=entry.display_name(), ref=entry.ref, status="failed",
                              error=f"{type(cause).__name__}: {' '.join(str(cause).split())[:300]}",
                              seconds=time.monotonic() - began)
        except ray.exceptions.RayError as exc:  # worker died, node lost, object lost, cancelled
            reason = type(exc).__name__
            hint = (" (killed: out of memory?)" if "OutOfMemory" in reason else "")
            return SignResult(name=entry.display_name(), ref=entry.ref, status="failed",
                              error=f"the Ray worker failed with {reason}{hint} while loading or signing this "
                                    "model", seconds=time.monotonic() - began)
        if result.status == "added":
            reporter.points(job.points)
        return result
