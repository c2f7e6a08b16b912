"""A fake Slurm on PATH for tests: sbatch, srun, sacct, squeue and scancel, enough for submitit's Slurm executor.

    install(tmp_path / "bin", tmp_path / "slurm")   # then put tmp_path/"bin" first on PATH

sbatch records its arguments and a copy of the script, prints "Submitted batch job N" and runs the script in the
background (each array task on its own) with SLURM_JOB_ID, SLURM_ARRAY_*, SLURM_JOB_NUM_NODES, SLURM_NTASKS and a
node list of `localhost` repeated, as many as --nodes; srun starts one process per task (SLURM_PROCID,
SLURM_NODEID, SLURM_LOCALID) with its output where --output says; sacct and squeue report each job's state from
files the runner writes (PENDING, RUNNING, then COMPLETED or FAILED); a test may write a state file itself.
Every call is appended to calls.jsonl. Nothing here is a scheduler: every job starts at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

TOOLS = ("sbatch", "srun", "sacct", "squeue", "scancel")


def install(bin_dir: Path, state_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        f = bin_dir / tool
        f.write_text(f'#!/bin/sh\nFAKE_SLURM_DIR="{state_dir}" exec "{sys.executable}" "{__file__}" {tool} "$@"\n')
        f.chmod(0o755)


def calls(state_dir: Path) -> list[dict]:
    p = state_dir / "calls.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def _state_dir() -> Path:
    return Path(os.environ["FAKE_SLURM_DIR"])


def _log(tool: str, argv: list[str]) -> None:
    with open(_state_dir() / "calls.jsonl", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps({"tool": tool, "argv": argv, "t": time.time()}) + "\n")


def _next_id() -> int:
    with open(_state_dir() / "counter", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read().strip() or 1000) + 1
        f.seek(0)
        f.truncate()
        f.write(str(n))
    return n


def _set_state(key: str, state: str) -> None:
    (_state_dir() / "jobs").mkdir(exist_ok=True)
    (_state_dir() / "jobs" / key).write_text(state)


def _states() -> dict[str, str]:
    d = _state_dir() / "jobs"
    return {p.name: p.read_text().strip() for p in d.iterdir()} if d.is_dir() else {}


def sbatch(argv: list[str]) -> int:
    script = Path(argv[-1])
    text = script.read_text()
    n = _next_id()
    (_state_dir() / f"sbatch-{n}.sh").write_text(text)
    opts = {m.group(1): m.group(2) for m in re.finditer(r"^#SBATCH --([\w-]+)(?:=(.*))?$", text, re.M)}
    nodes, per_node = int(opts.get("nodes", 1)), int(opts.get("ntasks-per-node", 1))
    tasks: list[int | None] = [None]
    if "array" in opts:
        lo, hi = opts["array"].split("%")[0].split("-")
        tasks = list(range(int(lo), int(hi) + 1))
    for i in tasks:
        key = str(n) if i is None else f"{n}_{i}"
        env = dict(os.environ, SLURM_JOB_ID=str(n if i is None else n * 100 + i), SLURM_JOB_NUM_NODES=str(nodes),
                   SLURM_NTASKS=str(nodes * per_node), SLURM_NTASKS_PER_NODE=str(per_node),
                   SLURM_JOB_NODELIST=",".join(["localhost"] * nodes), SLURM_SUBMIT_DIR=os.getcwd())
        if i is not None:
            env.update(SLURM_ARRAY_JOB_ID=str(n), SLURM_ARRAY_TASK_ID=str(i))
        _set_state(key, "PENDING")
        subprocess.Popen([sys.executable, __file__, "_run", key, str(script)], env=env, start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"Submitted batch job {n}")
    return 0


def _run(key: str, script: str) -> int:
    _set_state(key, "RUNNING")
    code = subprocess.call(["bash", script])
    _set_state(key, "COMPLETED" if code == 0 else "FAILED")
    return code


def srun(argv: list[str]) -> int:
    i = 0
    out = err = None
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i]
        if opt in ("--output", "--error"):
            if opt == "--output":
                out = argv[i + 1]
            else:
                err = argv[i + 1]
            i += 2
        else:
            i += 1
    cmd = argv[i:]
    ntasks = int(os.environ.get("SLURM_NTASKS", 1))
    per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", 1))

    def path(pattern: str | None, k: int) -> str | None:
        if pattern is None:
            return None
        return (pattern.replace("%A", os.environ.get("SLURM_ARRAY_JOB_ID", "")).replace(
            "%a", os.environ.get("SLURM_ARRAY_TASK_ID", "")).replace("%j", os.environ["SLURM_JOB_ID"])
            .replace("%t", str(k)))

    procs = []
    for k in range(ntasks):
        env = dict(os.environ, SLURM_PROCID=str(k), SLURM_LOCALID=str(k % per_node), SLURM_NODEID=str(k // per_node),
                   SLURM_STEP_ID="0")
        o, e = path(out, k), path(err, k)
        for p in (o, e):
            if p:
                Path(p).parent.mkdir(parents=True, exist_ok=True)
        procs.append(subprocess.Popen(cmd, env=env, stdout=open(o, "a") if o else None,
                                      stderr=open(e, "a") if e else None))
    return max(p.wait() for p in procs)


def sacct(argv: list[str]) -> int:
    ids = [argv[i + 1] for i, a in enumerate(argv) if a == "-j"]
    print("JobID|State|NodeList")
    for key, state in sorted(_states().items()):
        if any(key == j or key.startswith(j + "_") for j in ids):
            print(f"{key}|{state}|localhost")
    return 0


def squeue(argv: list[str]) -> int:
    ids = [argv[i + 1] for i, a in enumerate(argv) if a == "-j"]
    for key, state in sorted(_states().items()):
        if key in ids and state in ("PENDING", "RUNNING"):
            print(state)
    return 0


def scancel(argv: list[str]) -> int:
    return 0


if __name__ == "__main__":
    tool, args = sys.argv[1], sys.argv[2:]
    if tool == "_run":
        sys.exit(_run(*args))
    _log(tool, args)
    sys.exit(globals()[tool](args))
