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

Several nodes: inside a submitit job that spans nodes, each node's task runs
a `LocalExecutor(nodes=NodeGroup(...))`: torchrun for that node's ranks, the
rendezvous at the job's first node on a port every node derives from the job
id, the rank files in a folder on the shared filesystem, read by the first
node (ovprof/runner/cluster.py, ovprof/sweep/submit.py).
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
from ovprof.runner.worker import PHASE_MARK, die_with_parent

KILL_GRACE_S = 5.0
LOCK_CHECK_S = 5.0  # how often a waiting launcher looks for stale JIT-build locks (ovprof/runner/extensions.py)
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
    profile: dict | None = None  # `ovprof profile`: {"steps", "trace", "memory_snapshot"}; the worker profiles, times nothing


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


@dataclass(frozen=True)
class NodeGroup:
    """This node's part of a point that spans several: torchrun for its ranks, meeting at the first node."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int
    result_dir: Path  # on the shared filesystem: every node's ranks write their rank<r>.json here

    def torchrun(self, world_size: int) -> list[str]:
        """torchrun's arguments for this node (global rank = node_rank * ranks per node + local rank)."""
        return ["--nnodes", str(self.nnodes), "--node_rank", str(self.node_rank), "--nproc_per_node",
                str(world_size // self.nnodes), "--master_addr", self.master_addr, "--master_port",
                str(self.master_port)]

    def ranks(self, world_size: int) -> list[int]:
        """The global ranks this node runs."""
        per = world_size // self.nnodes
        return list(range(self.node_rank * per, (self.node_rank + 1) * per))



class Executor(Protocol):
    def run(self, jobs: Iterable[Job]) -> Iterator[JobResult]:
        """Run the jobs; yield one JobResult per job (in any order for a parallel executor)."""
        ...


def make_job(cfg: RunConfig, opts: ExecOptions, profile: dict | None = None) -> Job:
    """A job for `cfg`: its DeepSpeed config built, its log path chosen (unique per attempt)."""
    from ovprof.runner.deepspeed_config import build

    cfg = cfg.resolved()
    store_path = Path(opts.store)
    log_dir = Path(opts.log_dir) if opts.log_dir else store_path.parent / "logs"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Job(config=cfg, ds_config=build(cfg), opts=opts, log_path=log_dir / f"{cfg.run_id}-{stamp}.log",
               profile=profile)


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
                   environ=os.environ, nodes: NodeGroup | None = None) -> list[str]:
    worker = ["-m", "ovprof.runner.worker", "--spec", str(spec), "--result-dir", str(result_dir)]
    n = cfg.world_size
    if nodes is not None:  # one node of a multi-node job (ovprof/runner/cluster.py): torchrun for this node's ranks
        return [sys.executable, "-m", "torch.distributed.run", *nodes.torchrun(n), *worker]
    if n == 1 and not opts.hostfile:
        return [sys.executable, *worker]
    if opts.launcher == "deepspeed" or opts.hostfile:
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--master_port", str(port)]
        # With a hostfile the ranks are its slots; world_size must equal their sum (checked by DeepSpeed).
        cmd += ["--hostfile", opts.hostfile] if opts.hostfile else deepspeed_devices(n, environ)
        return cmd + ["--module", "ovprof.runner.worker", "--spec", str(spec), "--result-dir", str(result_dir)]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(n),
            "--master_addr", "127.0.0.1", "--master_port", str(port), *worker]


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, found through /proc (also those that left its process group or session,
    as a JIT extension build's compiler processes do)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGTERM then SIGKILL the worker's process group and every descendant outside it; wait for the worker."""
    tree = descendants(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for pid in tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=KILL_GRACE_S)
            if sig == signal.SIGKILL or not any(_alive(p) for p in tree):
                return
        except subprocess.TimeoutExpired:
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def last_phase(log_path: Path, chars: int = 8192) -> str | None:
    """The phase the worker last said it entered (its `[ovprof phase]` log lines), or None before the first."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - chars))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    lines = [ln for ln in text.splitlines() if ln.startswith(PHASE_MARK)]
    return lines[-1][len(PHASE_MARK):].strip() if lines else None


class _Forked:
    """A worker forked by the zygote, with the part of Popen's interface the executor uses."""

    def __init__(self, zygote, pid: int):
        self.zygote, self.pid, self.returncode = zygote, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.zygote.wait(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            code = self.zygote.wait(self.pid, 1e9 if timeout is None else timeout)
            if code is None:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            self.returncode = code
        return self.returncode


def _warn(msg: str) -> None:
    sys.stderr.write(f"warning: {msg}\n")
    sys.stderr.flush()


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

    def __init__(self, on_start=None, on_phase=None, poll_s: float = 0.5, slot=None, cancel=None,
                 nodes: NodeGroup | None = None, rank_files_grace_s: float = 30.0):
        self.on_start = on_start  # called with the Popen of each job's worker (tests kill it)
        self.on_phase = on_phase  # called with the worker's latest phase line whenever it changes
        self.poll_s = poll_s
        self.slot = slot  # ovprof/runner/slots.py: the devices or cores this executor's workers may use
        self.cancel = cancel  # a threading.Event: set, the running worker's tree is killed (Ctrl-C with slots)
        # This node's share of a multi-node point (a submitit job): torchrun with the job's rendezvous, rank files
        # in a shared folder; the first node waits up to rank_files_grace_s for the other nodes' files.
        self.nodes = nodes
        self.rank_files_grace_s = rank_files_grace_s

    def run(self, jobs: Iterable[Job]) -> Iterator[JobResult]:
        for job in jobs:
            yield self.run_one(job)

    def run_one(self, job: Job) -> JobResult:
        from ovprof.runner.extensions import clear_stale_locks

        cfg, opts = job.config, job.opts
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        clear_stale_locks(warn=_warn)
        out = JobResult(job=job, started_at=_now())
        t0 = time.perf_counter()
        nodes = self.nodes
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"ovprof-{cfg.run_id}-")))
            # A multi-node job's port is the one every node computed from the job id; its ranks' files go where
            # the first node can read them.
            port = nodes.master_port if nodes is not None else stack.enter_context(port_lease())
            spec = tmp / "spec.json"
            spec.write_text(json.dumps({"config": cfg.to_dict(), "ds_config": job.ds_config,
                                        **({"profile": job.profile} if job.profile else {})}))
            result_dir = nodes.result_dir if nodes is not None else tmp / "result"
            cmd = worker_command(cfg, opts, spec, result_dir, port, nodes=nodes)
            env = dict(os.environ)
            env.update({"MASTER_ADDR": nodes.master_addr if nodes is not None else "127.0.0.1",
                        "MASTER_PORT": str(port), "PYTHONUNBUFFERED": "1"})
            if cfg.world_size == 1:
                env.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
            else:
                for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
                    env.pop(k, None)
                env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.world_size)))
            if self.slot is not None:
                env.update(self.slot.env(cfg.world_size))
            cores = self.slot.cores if self.slot is not None else None

            def start_worker() -> None:
                die_with_parent()
                if cores is not None:
                    os.sched_setaffinity(0, cores)  # inherited by every rank and every process they start

            with open(job.log_path, "wb") as log:
                zygote = self._zygote(cfg, opts)
                if zygote is not None:  # a warm start: a fork of a process that has done the imports
                    proc = _Forked(zygote, zygote.fork(cmd[cmd.index("-m") + 2:], env, job.log_path, cores))
                else:
                    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, start_new_session=True, preexec_fn=start_worker)
                if self.on_start:
                    self.on_start(proc)
                try:
                    out.timed_out = not self._wait(proc, job, t0)
                    if out.timed_out:
                        _kill_tree(proc)
                except BaseException:  # Ctrl-C in the parent: take the worker's whole tree down with us
                    _kill_tree(proc)
                    raise
                # A failed rank exits at once; torchrun reaps the rest. Anything left behind goes now.
                leftovers = descendants(proc.pid)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                for pid in leftovers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if nodes is not None and nodes.node_rank == 0 and not out.timed_out:
                # the other nodes' ranks may end a moment after this node's: wait briefly for their files
                deadline = time.perf_counter() + self.rank_files_grace_s
                while len(list(result_dir.glob("rank*.json"))) < cfg.world_size and time.perf_counter() < deadline:
                    time.sleep(0.2)
            out.ranks = _read_ranks(result_dir)
        out.exit_code = proc.returncode
        out.wall_time_s = time.perf_counter() - t0
        out.finished_at = _now()
        return out

    def _zygote(self, cfg: RunConfig, opts: ExecOptions):
        """This thread's warm zygote for a single-rank point on a CPU machine, or None to spawn afresh."""
        if cfg.world_size != 1 or opts.hostfile or self.nodes is not None \
                or os.environ.get("OVPROF_ZYGOTE", "1") == "0":
            return None
        from ovprof.runner.zygote import for_this_thread

        z = for_this_thread()
        return z if z.start() else None

    def _wait(self, proc: subprocess.Popen, job: Job, t0: float) -> bool:
        """Wait for the worker within its timeout, reporting phase changes; False when it timed out."""
        from ovprof.runner.extensions import clear_stale_locks

        deadline = t0 + job.opts.timeout_s
        seen = None
        next_lock_check = time.perf_counter() + LOCK_CHECK_S
        while True:
            if self.cancel is not None and self.cancel.is_set():
                raise KeyboardInterrupt  # the caller kills the tree and records nothing for this point
            if time.perf_counter() >= next_lock_check:
                # A worker waiting on a build lock whose builder is gone (killed elsewhere) would sleep to its
                # timeout: the lock goes as soon as it is seen stale, and the waiting worker builds.
                clear_stale_locks(warn=_warn)
                next_lock_check = time.perf_counter() + LOCK_CHECK_S
            left = deadline - time.perf_counter()
            if left <= 0:
                return proc.poll() is not None
            try:
                proc.wait(timeout=min(self.poll_s, left))
                return True
            except subprocess.TimeoutExpired:
                pass
            if self.on_phase is not None:
                phase = last_phase(job.log_path)
                if phase is not None and phase != seen:
                    seen = phase
                    self.on_phase(phase)
