"""The executor seam: where a point's job runs. Submit jobs, get their rank files back; nothing else.

    from ovprof.runner.executor import LocalExecutor, make_job
    (result,) = LocalExecutor().run([make_job(cfg, opts)])
    result.ranks, result.exit_code, result.timed_out

An executor starts each job's worker (one process group per job, one result
file per rank), enforces its timeout, and returns a `JobResult`: the parsed
rank files, the exit status, whether it timed out, its log and wall time. It
does not classify the outcome, build the record or touch the store: that is
ovprof/results/record.py and ovprof/runner/launch.py, the same for every
executor. `LocalExecutor` runs jobs one after another on this machine; another
executor (device slots, a cluster) implements `run` and keeps the same
contract: every job submitted yields exactly one JobResult, also when its
worker dies, and Ctrl-C takes the job's processes down before it propagates.

Ports: each job's rendezvous port is leased under an exclusive lock file
(`port_lease`), so concurrent points, in this process or another ovprof
process, never pick the same one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Protocol

from ovprof.config import ExecOptions, RunConfig
from ovprof.errors import ConfigError

KILL_GRACE_S = 5.0
# Below Linux's ephemeral range (32768-60999), so the kernel never hands one of these to an outgoing connection.
PORT_RANGE = (20000, 32000)
PORT_LOCK_DIR = Path(tempfile.gettempdir()) / "ovprof-ports"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Job:
    """One point to run: what (config, DeepSpeed config) and how (options, where its log goes)."""

    config: RunConfig  # resolved
    ds_config: dict
    opts: ExecOptions
    log_path: Path


@dataclass
class JobResult:
    """What running a job left behind, before anyone judged it."""

    job: Job
    ranks: list[dict] = field(default_factory=list)  # the rank<r>.json files that were written, parsed
    exit_code: int | None = None  # negative: killed by that signal
    timed_out: bool = False
    started_at: str = ""
    finished_at: str = ""
    wall_time_s: float = 0.0


class Executor(Protocol):
    def run(self, jobs: Iterable[Job]) -> Iterator[JobResult]:
        """Run the jobs; yield one JobResult per job (in any order for a parallel executor)."""
        ...


def make_job(cfg: RunConfig, opts: ExecOptions) -> Job:
    """A job for `cfg`: its DeepSpeed config built, its log path chosen (unique per attempt)."""
    from ovprof.runner.deepspeed_config import build

    cfg = cfg.resolved()
    store_path = Path(opts.store)
    log_dir = Path(opts.log_dir) if opts.log_dir else store_path.parent / "logs"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Job(config=cfg, ds_config=build(cfg), opts=opts, log_path=log_dir / f"{cfg.run_id}-{stamp}.log")


# -- ports ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def port_lease(attempts: int = 500) -> Iterator[int]:
    """A TCP port held for this block: an exclusive flock on <tmp>/ovprof-ports/<port>.lock, and free to bind.

    Picking a port by binding to 0 and closing the socket races: two points started together can be told the
    same port. The lock makes the choice exclusive among ovprof processes for as long as the point runs."""
    PORT_LOCK_DIR.mkdir(parents=True, exist_ok=True)
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(attempts):
        port = rng.randrange(*PORT_RANGE)
        fd = os.open(PORT_LOCK_DIR / f"{port}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
        except OSError:  # someone outside ovprof listens there
            os.close(fd)
            continue
        try:
            yield port
        finally:
            os.close(fd)  # releases the lock
        return
    raise RuntimeError(f"no free port in {PORT_RANGE[0]}-{PORT_RANGE[1]} after {attempts} tries")


# -- the local, serial executor ----------------------------------------------------------------------------


def deepspeed_devices(n: int, environ=os.environ) -> list[str]:
    """DeepSpeed launcher arguments that run `n` local ranks on the devices the user chose.

    With `--num_gpus n` DeepSpeed's runner deletes CUDA_VISIBLE_DEVICES and takes GPUs 0..n-1, whatever the
    user set; `--include localhost:<ids>` names the devices instead (the first n the variable lists)."""
    visible = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible:
        return ["--num_gpus", str(n)]
    ids = [x.strip() for x in visible.split(",") if x.strip()]
    if not all(x.isdigit() for x in ids):
        raise ConfigError("DeepSpeed's launcher takes device indices, not UUIDs; use launcher torchrun (which "
                          "keeps CUDA_VISIBLE_DEVICES as it is) or list indices", key="CUDA_VISIBLE_DEVICES",
                          value=visible)
    if len(ids) < n:
        raise ConfigError(f"lists {len(ids)} devices, fewer than world_size {n}", key="CUDA_VISIBLE_DEVICES",
                          value=visible)
    return ["--include", "localhost:" + ",".join(ids[:n])]


def worker_command(cfg: RunConfig, opts: ExecOptions, spec: Path, result_dir: Path, port: int,
                   environ=os.environ) -> list[str]:
    worker = ["-m", "ovprof.runner.worker", "--spec", str(spec), "--result-dir", str(result_dir)]
    n = cfg.world_size
    if n == 1 and not opts.hostfile:
        return [sys.executable, *worker]
    if opts.launcher == "deepspeed" or opts.hostfile:
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--master_port", str(port)]
        # With a hostfile the ranks are its slots; world_size must equal their sum (checked by DeepSpeed).
        cmd += ["--hostfile", opts.hostfile] if opts.hostfile else deepspeed_devices(n, environ)
        return cmd + ["--module", "ovprof.runner.worker", "--spec", str(spec), "--result-dir", str(result_dir)]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(n),
            "--master_addr", "127.0.0.1", "--master_port", str(port), *worker]


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (no orphaned workers after a kill -9)."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_ranks(result_dir: Path) -> list[dict]:
    ranks = []
    for f in sorted(result_dir.glob("rank*.json")) if result_dir.exists() else []:
        try:
            ranks.append(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError):
            pass  # a rank that died mid-write: counted as missing
    return ranks


class LocalExecutor:
    """Runs jobs one at a time on this machine, each in its own process group and temporary directory."""

    def __init__(self, on_start=None):
        self.on_start = on_start  # called with the Popen of each job's worker (tests kill it)

    def run(self, jobs: Iterable[Job]) -> Iterator[JobResult]:
        for job in jobs:
            yield self.run_one(job)

    def run_one(self, job: Job) -> JobResult:
        cfg, opts = job.config, job.opts
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = JobResult(job=job, started_at=_now())
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"ovprof-{cfg.run_id}-") as tmp, port_lease() as port:
            tmp = Path(tmp)
            spec = tmp / "spec.json"
            spec.write_text(json.dumps({"config": cfg.to_dict(), "ds_config": job.ds_config}))
            result_dir = tmp / "result"
            cmd = worker_command(cfg, opts, spec, result_dir, port)
            env = dict(os.environ)
            env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONUNBUFFERED": "1"})
            if cfg.world_size == 1:
                env.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
            else:
                for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
                    env.pop(k, None)
                env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.world_size)))
            with open(job.log_path, "wb") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=True, preexec_fn=die_with_parent)
                if self.on_start:
                    self.on_start(proc)
                try:
                    proc.wait(timeout=opts.timeout_s)
                except subprocess.TimeoutExpired:
                    out.timed_out = True
                    _kill_group(proc)
                except BaseException:  # Ctrl-C in the parent: take the worker group down with us
                    _kill_group(proc)
                    raise
                # A failed rank exits at once; torchrun reaps the rest. Anything left in the group goes now.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            out.ranks = _read_ranks(result_dir)
        out.exit_code = proc.returncode
        out.wall_time_s = time.perf_counter() - t0
        out.finished_at = _now()
        return out
