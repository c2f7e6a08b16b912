"""Points as cluster jobs through submitit: the options, the jobs' resources, their state, a node's share of a point.

    ovprof sweep run sweeps/ci-memory.toml --executor submitit --cluster local
    ovprof sweep run sweeps/paper-vit-l14-224.toml --executor submitit --cluster slurm --partition gpu \\
        --gpus-per-node 8 --time 60 --account proj --sbatch qos=high

The options come from the sweep file's [executor] table and the command line
(flags win); every value is checked here, before anything is submitted, and a
bad one is one ConfigError naming where it came from, the key and the value.
Nothing here imports submitit at module level: `require_submitit` does, and
says how to install it when it is missing. The sweep-level driver (what is
submitted, the ledger, re-attaching) is ovprof/sweep/submit.py; a job runs the
same worker path as a local point (ovprof/runner/launch.run_point).

A point of world size W runs on `nodes` nodes (default: ceil(W / gpus_per_node),
or one node without GPUs) with one task per node: each node's task starts
torchrun for its W / nodes ranks, all meeting at the first node of the job
(`NodeGroup`), and the ranks write their result files into a folder of the job
on the shared filesystem, where the first node's task reads them.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ovprof.errors import ConfigError, UsageError, printable
from ovprof.runner.executor import NodeGroup

EXECUTORS = ("local", "submitit")
# local: submitit's LocalExecutor (this machine: tests, one workstation); auto: slurm where sbatch and srun are on PATH
CLUSTERS = ("auto", "local", "slurm")
# The keys of a sweep file's [executor] table besides `slots`, each also a flag (`gpus_per_node` is --gpus-per-node).
KEYS = ("executor", "cluster", "partition", "nodes", "gpus_per_node", "time", "account", "sbatch", "submitit_folder",
        "max_jobs")
SUBMITIT_KEYS = KEYS[1:]  # meaningless for the local executor: refused there rather than ignored
# sbatch options ovprof sets itself (its own keys, or submitit's machinery): --sbatch may not set them.
OWN_SBATCH = {"partition": "partition", "nodes": "nodes", "time": "time", "account": "account",
              "gpus-per-node": "gpus_per_node", "ntasks-per-node": None, "ntasks": None, "array": "max_jobs",
              "output": None, "error": None, "open-mode": None, "signal": None, "job-name": None, "wckey": None}
SBATCH_KEY = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
TIME_MARGIN_MIN = 5  # job time beyond the point's own timeout: job start, imports, submitit's signal delay (90 s)
LOCAL_MAX_JOBS = 1  # the local cluster runs one job at a time unless told (each job would take every core)

PIP_HINT = "pip install 'ovprof[slurm]'"


def require_submitit():
    """The submitit module, or a UsageError (exit 2) saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise UsageError(f"--executor submitit needs the submitit package: {PIP_HINT}") from None
    return submitit


# -- options --------------------------------------------------------------------------------------------


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _plain_text(key: str, value: Any, source: str | None) -> str:
    """A value that goes into an sbatch line: a non-empty string without whitespace or control characters."""
    if not isinstance(value, str) or not value or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise ConfigError("must be a non-empty name without spaces or control characters", source=source, key=key,
                          value=value)
    return value


def _positive(key: str, value: Any, source: str | None, what: str, zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        raise ConfigError(f"must be a {'non-negative' if zero else 'positive'} integer ({what})", source=source,
                          key=key, value=value)
    return value


def _sbatch_entry(key: Any, value: Any, source: str | None) -> tuple[str, str | bool]:
    shown = f"sbatch.{key}"
    if not isinstance(key, str) or not SBATCH_KEY.match(key.replace("_", "-")):
        raise ConfigError("is not an sbatch long option name (letters, digits and -, e.g. qos or mem-per-gpu)",
                          source=source, key="sbatch", value=printable(key, 60))
    name = key.replace("_", "-")
    if name in OWN_SBATCH or len(name) == 1:
        own = OWN_SBATCH.get(name)
        hint = f"use {_flag(own)} or [executor] {own}" if own else "ovprof and submitit set it"
        raise ConfigError(f"cannot be set through sbatch options ({hint})", source=source, key=shown, value=value)
    if value is True:
        return name, True
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError("must be a string, an integer or true (a bare flag)", source=source, key=shown, value=value)
    text = str(value)
    if not text or any(not ch.isprintable() for ch in text):
        raise ConfigError("must be non-empty text without control characters", source=source, key=shown,
                          value=value)
    return name, text


def check_value(key: str, value: Any, source: str | None) -> Any:
    """One [executor] value (or flag), checked and normalised; a ConfigError names the source, key and value."""
    if key == "executor":
        if value not in EXECUTORS:
            raise ConfigError(f"must be one of {', '.join(EXECUTORS)}", source=source, key=key, value=value)
        return value
    if key == "cluster":
        if value not in CLUSTERS:
            raise ConfigError(f"must be one of {', '.join(CLUSTERS)}", source=source, key=key, value=value)
        return value
    if key in ("partition", "account"):
        return _plain_text(key, value, source)
    if key == "nodes":
        return _positive(key, value, source, "nodes per point")
    if key == "gpus_per_node":
        return _positive(key, value, source, "GPUs per node", zero=True)
    if key == "time":
        return _positive(key, value, source, "minutes per job")
    if key == "max_jobs":
        return _positive(key, value, source, "jobs pending or running at once")
    if key == "submitit_folder":
        if not isinstance(value, str) or not value.strip() or any(not ch.isprintable() for ch in value):
            raise ConfigError("must be a folder path (a non-empty string)", source=source, key=key, value=value)
        return value
    if key == "sbatch":
        if not isinstance(value, Mapping):
            raise ConfigError("must be a table of sbatch options, e.g. sbatch = { qos = \"high\" }", source=source,
                              key=key, value=value)
        return dict(_sbatch_entry(k, v, source) for k, v in value.items())
    raise ConfigError("unknown key", source=source, key=key, hint=f"known keys: slots, {', '.join(KEYS)}")


def sbatch_from_cli(pairs: list[str]) -> dict[str, str | bool]:
    """--sbatch KEY=VALUE (or a bare KEY: a flag such as exclusive), checked."""
    out: dict[str, str | bool] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if eq and not value:
            raise ConfigError("KEY=VALUE with an empty value (a bare flag is just KEY)", key="--sbatch", value=pair)
        name, val = _sbatch_entry(key.strip(), value if eq else True, "--sbatch")
        out[name] = val
    return out


@dataclass(frozen=True)
class ClusterOptions:
    """How a sweep's points are executed beyond one machine's slots; none of it enters a run_id."""

    executor: str = "local"  # local (this machine: ovprof/runner/executor.py) | submitit
    cluster: str = "auto"  # local | slurm | auto (slurm where sbatch and srun are on PATH, else local)
    partition: str | None = None
    nodes: int | None = None  # per point; None: ceil(world_size / gpus_per_node), or 1 without GPUs
    gpus_per_node: int = 0  # GPUs each job asks per node (0: CPU points)
    time: int | None = None  # job time limit in minutes; None: the point's timeout (x max-batch trials) + margin
    account: str | None = None
    sbatch: dict[str, str | bool] = field(default_factory=dict)  # extra sbatch options (no leading --)
    submitit_folder: str | None = None  # submitit's logs and pickles; None: <store>.submitit/
    max_jobs: int | None = None  # jobs pending or running at once (slurm: the array's %N); None: 1 local, 256 slurm

    @property
    def submitit(self) -> bool:
        return self.executor == "submitit"

    def resolved_cluster(self) -> str:
        if self.cluster != "auto":
            return self.cluster
        return "slurm" if shutil.which("sbatch") and shutil.which("srun") else "local"

    def folder(self, store: str | Path) -> Path:
        if self.submitit_folder:
            return Path(self.submitit_folder)
        from ovprof.results.store import sidecar

        return sidecar(store, ".submitit")

    def describe(self) -> str:
        parts = [f"cluster {self.resolved_cluster()}"]
        for key in ("partition", "nodes", "gpus_per_node", "time", "account", "max_jobs"):
            v = getattr(self, key)
            if v not in (None, 0):
                parts.append(f"{key} {v}")
        parts += [f"--{k}" + ("" if v is True else f"={v}") for k, v in self.sbatch.items()]
        return ", ".join(parts)


def resolve(table: Mapping[str, Any], table_source: str | None, flags: Mapping[str, Any]) -> ClusterOptions:
    """The options of a sweep: its [executor] table (values already checked), then the flags given (not None).

    Submitit options with the local executor, and a multi-node point on the local cluster, are refused with
    the place they came from."""
    given: dict[str, tuple[Any, str | None]] = {k: (v, table_source) for k, v in table.items()}
    for k, v in flags.items():
        if v is None or (k == "sbatch" and not v):
            continue
        if k != "sbatch":
            try:
                v = check_value(k, v, None)
            except ConfigError as e:  # named as the user typed it
                raise ConfigError(e.detail, key=_flag(k), value=v) from None
        given[k] = (v, None)
    if "sbatch" in given and "sbatch" in table and flags.get("sbatch"):  # flags add to the file's options
        given["sbatch"] = ({**table["sbatch"], **flags["sbatch"]}, None)
    values = {k: v for k, (v, _) in given.items()}
    opts = ClusterOptions(**values)

    def where(key: str) -> tuple[str | None, str]:
        src = given[key][1]
        return src, (key if src is not None else _flag(key))

    if not opts.submitit:
        # a file written for submitit still runs locally with --executor local; a submitit flag without submitit,
        # or a submitit key in a file that does not choose submitit, is a mistake
        file_is_submitit = table.get("executor") == "submitit"
        for key in SUBMITIT_KEYS:
            if key in given and (given[key][1] is None or not file_is_submitit):
                src, shown = where(key)
                raise ConfigError("is an option of the submitit executor (set executor = \"submitit\", or "
                                  "--executor submitit)", source=src, key=shown, value=given[key][0])
    if opts.submitit and opts.cluster == "local" and (opts.nodes or 1) > 1:  # "auto": resolved at run (check_point)
        src, shown = where("nodes")
        raise ConfigError("the local cluster runs a job on this machine only (nodes = 1); multi-node points need "
                          "cluster slurm", source=src, key=shown, value=opts.nodes)
    return opts


# -- resources per point --------------------------------------------------------------------------------


def nodes_for(world_size: int, opts: ClusterOptions) -> int:
    if opts.nodes:
        return opts.nodes
    if opts.gpus_per_node:
        return max(1, math.ceil(world_size / opts.gpus_per_node))
    return 1


def check_point(world_size: int, opts: ClusterOptions, label: str) -> int:
    """The nodes a point runs on; a UsageError (before anything is submitted) when its ranks do not split evenly."""
    n = nodes_for(world_size, opts)
    if world_size % n:
        raise UsageError(f"point {label}: world_size {world_size} does not split over {n} nodes (one torchrun per "
                         "node, the same ranks on each)")
    if opts.gpus_per_node and world_size // n > opts.gpus_per_node:
        raise UsageError(f"point {label}: {world_size // n} ranks per node on {n} node(s), more than gpus_per_node "
                         f"{opts.gpus_per_node}")
    if n > 1 and opts.resolved_cluster() == "local":
        raise UsageError(f"point {label}: needs {n} nodes; the local cluster has one (use cluster slurm)")
    return n


def job_minutes(timeout_s: float, trials: int, opts: ClusterOptions) -> int:
    """A job's time limit: --time, else every trial's timeout plus a margin (the worker's own timeout fires
    first, so a point that hangs is still a timeout row, not a job Slurm killed)."""
    if opts.time:
        return opts.time
    return math.ceil(timeout_s * trials / 60) + TIME_MARGIN_MIN


def local_gpus() -> tuple[int, ...]:
    """The GPU indices a local-cluster job may see (submitit's local executor sets CUDA_VISIBLE_DEVICES itself).

    Asked of NVML, not torch: the sweep process stays free of torch's import."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return tuple(int(d) for d in ids) if all(d.isdigit() for d in ids) else ()
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return tuple(range(pynvml.nvmlDeviceGetCount()))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no driver, no library: no GPUs
        return ()


def parameters(opts: ClusterOptions, cluster: str, *, nodes: int, minutes: int, name: str,
               visible_gpus: tuple[int, ...] = ()) -> dict[str, Any]:
    """The executor's update_parameters(...) for one group of points (one job array on Slurm)."""
    if cluster == "slurm":
        p: dict[str, Any] = {"job_name": name, "time": minutes, "nodes": nodes, "ntasks_per_node": 1}
        if opts.gpus_per_node:
            p["gpus_per_node"] = opts.gpus_per_node
        if opts.partition:
            p["partition"] = opts.partition
        if opts.account:
            p["account"] = opts.account
        if opts.sbatch:
            p["additional_parameters"] = dict(opts.sbatch)
        if opts.max_jobs:
            p["array_parallelism"] = opts.max_jobs
        return p
    # submitit's local executor sets CUDA_VISIBLE_DEVICES to the first gpus_per_node of visible_gpus ("" for none):
    # a job sees the GPUs asked for, else every GPU this process sees.
    p = {"timeout_min": minutes, "nodes": 1, "tasks_per_node": 1}
    gpus = opts.gpus_per_node or len(visible_gpus)
    if gpus:
        p["gpus_per_node"] = gpus
        if visible_gpus:
            p["visible_gpus"] = visible_gpus
    return p


def make_executor(cluster: str, folder: Path):
    """submitit's executor for `cluster`, its jobs' files under folder/<job id>/."""
    submitit = require_submitit()
    if cluster == "slurm":
        try:
            return submitit.SlurmExecutor(folder=str(folder / "%j"))
        except RuntimeError as e:  # no srun on PATH
            raise UsageError(f"cluster slurm: {e}") from None
    return submitit.LocalExecutor(folder=str(folder / "%j"))


# -- a job's state, seen from the sweep -----------------------------------------------------------------

# Slurm states of a job that may still run (sacct, squeue); anything else is over. PREEMPTED jobs are requeued.
SLURM_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED",
                "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "PREEMPTED", "READY", "RESV_DEL_HOLD"}


def _local_controller_alive(job_id: str, folder: str) -> bool:
    """A local-cluster job is its controller process (`python -m submitit.local._local FOLDER`), pid = job id."""
    if not job_id.isdigit():
        return False
    try:
        with open(f"/proc/{job_id}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"submitit.local._local" in argv and folder.encode() in argv


def _squeue_state(job_id: str) -> str | None:
    """The state squeue shows for the job, or None when it is not in the queue (or squeue is missing)."""
    import subprocess

    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                             timeout=60).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0].strip().upper() if out else None


class JobRef:
    """One submitted job: its id, folder and cluster, and what submitit can say about it.

    `job` is submitit's Job when this process submitted it; a sweep that re-attaches (the ledger) rebuilds one
    from the folder and id."""

    def __init__(self, cluster: str, folder: str, job_id: str, job=None):
        self.cluster, self.folder, self.job_id = cluster, folder, job_id
        self.attached = job is None
        if job is None:
            submitit = require_submitit()
            cls = submitit.SlurmJob if cluster == "slurm" else submitit.LocalJob
            job = cls(folder=folder, job_id=job_id)
        self.job = job
        self._main = job.task(0) if len(getattr(job, "_sub_jobs", ())) else job  # the first node's task

    @property
    def stdout(self) -> Path:
        return self._main.paths.stdout

    def state(self, force: bool = False) -> str:
        """A Slurm-like state (PENDING, RUNNING, COMPLETED, FAILED, ...; local: RUNNING or FINISHED)."""
        if self.cluster == "local":
            if not self.attached:
                return "RUNNING" if self.job.state == "RUNNING" else "FINISHED"
            return "RUNNING" if _local_controller_alive(self.job_id, self.folder) else "FINISHED"
        if self._main.paths.result_pickle.exists() and not force:
            return "COMPLETED"
        state = self.job.watcher.get_state(self.job_id, mode="force" if force else "standard").split()[0].upper()
        if state == "UNKNOWN":  # sacct does not know it (yet, or any more): ask the queue
            state = _squeue_state(self.job_id) or ("COMPLETED" if self._main.paths.result_pickle.exists()
                                                   else "UNKNOWN")
        return state

    def active(self, force: bool = False) -> bool:
        state = self.state(force)
        if state == "UNKNOWN":  # neither sacct nor squeue knows it, and it left no result: gone
            return False
        return state in SLURM_ACTIVE or state == "RUNNING"

    def outcome(self) -> tuple[str, Any]:
        """("result", what the job function returned) or ("error", why there is none); only once it ended."""
        if not self._main.paths.result_pickle.exists():
            return "error", f"job {self.job_id} ended ({self.state()}) without a result; log: {self.stdout}"
        try:
            return "result", self._main.result()
        except Exception as e:  # noqa: BLE001 - the job's own traceback, or submitit's reason
            lines = str(e).strip().splitlines()
            why = lines[-1] if lines else type(e).__name__
            return "error", f"job {self.job_id}: {printable(why, 300)}; log: {self.stdout}"


# -- a node's share of a multi-node point ---------------------------------------------------------------


def master_port(job_id: str) -> int:
    """The rendezvous port every node of a job computes alike (submitit's rule: seeded by the job id)."""
    return random.Random(job_id).randint(20000, 60000)


def node_group(result_root: Path) -> NodeGroup | None:
    """Inside a submitit job: this node's NodeGroup when the job spans several nodes, else None.

    One task per node (tasks_per_node = 1): the task's global rank is the node index, and the first host of
    the job's node list is where torchrun's rendezvous store listens (MASTER_ADDR and MASTER_PORT, as submitit's
    TorchDistributedEnvironment chooses them)."""
    submitit = require_submitit()
    env = submitit.JobEnvironment()
    if env.num_nodes <= 1:
        return None
    hosts = list(env.hostnames)
    port = int(os.environ["MASTER_PORT"]) if os.environ.get("MASTER_PORT") else master_port(env.job_id)
    return NodeGroup(nnodes=env.num_nodes, node_rank=env.node, master_addr=hosts[0], master_port=port,
                     result_dir=result_root / f"ranks-{env.job_id}")
