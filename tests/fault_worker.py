"""A zygote for the fault tests: imports gifindex once, then forks one real child process per command.

Protocol (one JSON command per stdin line): the zygote forks, prints ``pid PID``, waits for the child and
prints ``done PID STATUS`` (STATUS: exit code, or -SIGNAL); with ``"background": true`` it does not wait
(``{"op": "wait", "pid": PID}`` reaps such a child later). The test kills children with SIGKILL by pid.
Forking from a warm process keeps each trial at a fraction of a second instead of seconds of imports.
"""
from __future__ import annotations

import io
import json
import os
import resource
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import torch  # noqa: E402

torch.set_num_threads(1)  # before any compute: forked children must not inherit a thread pool

import faiss  # noqa: E402,F401
import timm  # noqa: E402,F401

import gifindex.index.search as search_mod  # noqa: E402
import gifindex.models.hub  # noqa: E402,F401
from gifindex.cli import main as cli_main  # noqa: E402
from gifindex.executors import InlineExecutor  # noqa: E402
from gifindex.index import Index  # noqa: E402
from gifindex.manifest import read_manifest  # noqa: E402


def op_ingest(cmd: dict) -> int:
    with Index.open(cmd["index"]) as index:
        index.ingest(read_manifest(cmd["manifest"]), commit_every=cmd.get("commit_every", 1),
                     executor=InlineExecutor(), wait=cmd.get("wait", 0.0))
    return 0


def op_rebuild_hang(cmd: dict) -> int:
    """Rebuild, but stall for good in the middle of writing search.faiss (after half the bytes)."""
    class Writer:   # stands in for faiss.PyCallbackIOWriter: keeps the Python write the search file goes through
        def __init__(self, write):
            self.write = write

    original, real_writer = search_mod.faiss.write_index, search_mod.faiss.PyCallbackIOWriter

    def slow_write(index, writer):
        whole = io.BytesIO()
        into = real_writer(whole.write)
        original(index, into)
        del into
        data = whole.getvalue()
        writer.write(data[: len(data) // 2])
        handle = writer.write.__self__          # the open temporary file
        handle.flush()
        os.fsync(handle.fileno())
        open(cmd["ready"], "w").close()
        time.sleep(600)

    search_mod.faiss.PyCallbackIOWriter = Writer
    search_mod.faiss.write_index = slow_write
    Index.open(cmd["index"]).rebuild()
    return 0


def op_hold_lock(cmd: dict) -> int:
    """Hold the writer lock the way an ingest does, then hang (to be killed)."""
    with Index.open(cmd["index"]) as index, index.writer():
        open(cmd["ready"], "w").close()
        time.sleep(600)
    return 0


def op_cli(cmd: dict) -> int:
    """Run the command line with stdout/stderr to files, optionally under RLIMIT_FSIZE (disk full)."""
    if cmd.get("fsize"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (cmd["fsize"], cmd["fsize"]))
    out = os.open(cmd["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(cmd["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    sys.stdout.flush()
    os.dup2(out, 1)
    os.dup2(err, 2)
    try:
        cli_main(cmd["args"], prog_name="gifindex")
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


OPS = {"ingest": op_ingest, "rebuild_hang": op_rebuild_hang, "hold_lock": op_hold_lock, "cli": op_cli}


def main() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "wait":  # reap a background child
            _, status = os.waitpid(cmd["pid"], 0)
            print(f"done {cmd['pid']} {os.waitstatus_to_exitcode(status)}", flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = OPS[cmd["op"]](cmd)
            except BaseException as exc:  # noqa: BLE001
                sys.stderr.write(f"child error: {type(exc).__name__}: {exc}\n")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(f"pid {pid}", flush=True)
        if cmd.get("background"):
            continue
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        print(f"done {pid} {code}", flush=True)


if __name__ == "__main__":
    main()
