"""A warm start per point: a zygote that has imported torch and DeepSpeed forks one fresh worker per point.

    python -m ovprof.runner.zygote          # started by LocalExecutor, never by hand

Most of a debug-size point's wall time is imports, paid again by every worker:
torch, DeepSpeed, and the torch._dynamo that `deepspeed.initialize` pulls in
through its optimizer checks (seconds each on a busy core). The zygote pays
them once per sweep: it imports everything a worker needs, checks that it is
still single-threaded (forking a process whose thread pools have started is
unsafe, so it refuses, and the executor falls back to a fresh interpreter),
then forks one child per request. Each child is its own process in its own
session with the job's environment, working folder, core affinity and log,
and runs the ordinary worker (`ovprof.runner.worker.main`): OOM, kill and
timeout are still a row, and nothing leaks from one point to the next because
no point ever runs in the zygote itself.

Protocol, one JSON object per line: the executor writes {"argv", "env", "cwd",
"log", "cores"}; the zygote answers {"pid": N}, and {"exit": N, "code": C}
when that child ends (C < 0: killed by signal -C). Used on CPU machines for
single-rank points; CUDA, where a forked CUDA context is not usable, and
multi-rank points (torchrun starts its own processes) spawn as before.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

READY = "ready"
WARM_IMPORTS = ("torch", "deepspeed", "torch._dynamo", "deepspeed.runtime.engine",
                "deepspeed.runtime.zero.utils", "ovprof.objectives", "ovprof.measure.memory",
                "ovprof.measure.monitors", "ovprof.measure.env", "ovprof.runner.worker")


def _warm() -> str | None:
    """Import what a worker needs; None when forking is safe afterwards, else why not."""
    import importlib

    from ovprof.runner.worker import skip_unused_imports

    skip_unused_imports()
    for name in WARM_IMPORTS:
        importlib.import_module(name)
    try:  # deepspeed.initialize imports its Muon optimizer module (torch.compile decorators) on first use
        importlib.import_module("deepspeed.runtime.zero.muon.muon_optimizer")
    except Exception:  # noqa: BLE001 - an older DeepSpeed without it: nothing to warm
        pass
    import torch

    if torch.cuda.is_available():
        return "CUDA is available: a forked CUDA context is not usable"
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        return f"the zygote has {threads} threads after its imports: forking it would not be safe"
    return None


def _child(req: dict) -> None:
    """In the forked child: become the job's worker process, then exit with its code."""
    code = 1
    try:
        os.setsid()
        from ovprof.runner.worker import die_with_parent

        die_with_parent()
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        if req.get("cores"):
            os.sched_setaffinity(0, req["cores"])
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from ovprof.runner.worker import main

        sys.argv = ["ovprof.runner.worker", *req["argv"]]
        code = main(req["argv"]) or 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - the worker writes its own result; this is a last resort
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> int:
    """The zygote's loop: fork a child per request, report each child's exit."""
    from ovprof.runner.worker import die_with_parent

    die_with_parent()
    # The protocol gets its own copy of stdout; fd 1 itself goes to stderr, so that what libraries print while
    # importing (DeepSpeed logs to stdout) can never be taken for a message.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    why = _warm()
    if why is not None:
        out.write(json.dumps({"refused": why}) + "\n")
        out.flush()
        return 0
    out.write(json.dumps({READY: True}) + "\n")
    out.flush()
    inp = sys.stdin.buffer
    buf = b""
    while True:
        ready, _, _ = select.select([inp], [], [], 0.05)
        if ready:
            chunk = os.read(inp.fileno(), 65536)
            if not chunk:  # the executor is gone: so are we (children die with us, PR_SET_PDEATHSIG)
                return 0
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(req)
                out.write(json.dumps({"pid": pid}) + "\n")
                out.flush()
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            out.write(json.dumps({"exit": pid, "code": code}) + "\n")
            out.flush()


class Zygote:
    """The executor's side: start one zygote, hand it jobs, hear their exits. One per thread (not shared)."""

    START_TIMEOUT_S = 300.0

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.refused: str | None = None
        self._buf = b""
        self._exits: dict[int, int] = {}

    def start(self) -> bool:
        """True when the zygote is warm and serving; False (with `refused` saying why) to spawn instead."""
        if self.proc is not None and self.proc.poll() is None:
            return True
        if self.refused is not None:
            return False
        from ovprof.runner.worker import die_with_parent

        self.proc = subprocess.Popen([sys.executable, "-m", "ovprof.runner.zygote"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
                                     # numpy's OpenBLAS would start a thread at import; a single-threaded
                                     # zygote forks safely (torch's own intra-op pool starts in each child)
                                     env=dict(os.environ, PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1",
                                              # pyarrow's jemalloc, if anything imports it: no background thread
                                              JE_ARROW_MALLOC_CONF="background_thread:false"))
        msg = self._read(time.monotonic() + self.START_TIMEOUT_S)
        if not msg or not msg.get(READY):
            self.refused = (msg or {}).get("refused", "the zygote did not start")
            self.close()
            return False
        return True

    def _read(self, deadline: float) -> dict | None:
        """The next message, or None once `deadline` passes (looks at least once, even with no time left)."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buf += chunk
            elif left <= 0:
                return None
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            msg = None
        return msg if isinstance(msg, dict) else self._read(deadline)

    def fork(self, argv: list[str], env: dict, log: Path, cores=None) -> int:
        assert self.proc is not None and self.proc.stdin is not None
        req = {"argv": argv, "env": env, "cwd": os.getcwd(), "log": str(log), "cores": list(cores) if cores else None}
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        while True:
            msg = self._read(time.monotonic() + 60)
            if msg is None:
                raise RuntimeError("the zygote stopped answering")
            if "pid" in msg:
                return msg["pid"]
            self._exits[msg["exit"]] = msg["code"]

    def wait(self, pid: int, timeout: float) -> int | None:
        """The child's exit code (negative: signal), or None if it is still running after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while pid not in self._exits:
            msg = self._read(deadline)
            if msg is None:
                if self.proc is not None and self.proc.poll() is not None:
                    return -signal.SIGKILL  # the zygote died: its children died with it
                return None
            if "exit" in msg:
                self._exits[msg["exit"]] = msg["code"]
        return self._exits.pop(pid)

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.kill()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.proc = None


_local = threading.local()


def for_this_thread() -> Zygote:
    """The calling thread's zygote (started on first use; every slot of a sweep has its own)."""
    z = getattr(_local, "zygote", None)
    if z is None:
        z = _local.zygote = Zygote()
    return z


if __name__ == "__main__":
    sys.exit(serve())
