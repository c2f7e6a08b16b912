"""Points as submitit jobs: options, the inbox, a node's share of a point, a fake Slurm, a killed parent.

What is tested how (docs/scale.md, "Slurm with submitit"):
- submitit's local executor (real jobs, real workers): ci-memory points, the parent SIGKILLed mid-sweep, rerun.
- a fake Slurm on PATH (tests/fake_slurm.py: sbatch, srun, sacct, squeue, scancel): the sbatch script submitit
  writes, a job array, re-attaching and resubmitting from the ledger (jobs stubbed: tests/fake_jobs.py), and one
  real 2-node point whose two "nodes" are two tasks on this machine meeting through torchrun.
- no real Slurm cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ovprof.config import ExecOptions, RunConfig
from ovprof.errors import ConfigError, UsageError
from ovprof.results import inbox, store
from ovprof.results import record as R
from ovprof.runner import cluster as CL
from ovprof.sweep import spec as S
from ovprof.sweep import submit
from ovprof.sweep.progress import Reporter

import fake_jobs
import fake_slurm
from conftest import ROOT, TINY, tiny_toml


# -- options ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table,key,needle", [
    ('executor = "slurm"', "executor", "local, submitit"),
    ('executor = "submitit"\ncluster = "pbs"', "cluster", "auto, local, slurm"),
    ('executor = "submitit"\npartition = "gpu a"', "partition", "without spaces"),
    ('executor = "submitit"\ntime = 0', "time", "positive"),
    ('executor = "submitit"\ngpus_per_node = -1', "gpus_per_node", "non-negative"),
    ('executor = "submitit"\nsbatch = { time = "10" }', "sbatch.time", "--time"),
    ('executor = "submitit"\nsbatch = { "qos x" = "a" }', "sbatch", "long option"),
    ('partition = "gpu"', "partition", "submitit"),
    ('executor = "submitit"\ncluster = "local"\nnodes = 2', "nodes", "local cluster"),
    ('executor = "submitit"\nnode = 2', "node", "unknown key"),
])
def test_a_bad_executor_table_is_one_error_naming_file_key_and_value(tmp_path, table, key, needle):
    f = tmp_path / "s.toml"
    f.write_text(tiny_toml() + "[executor]\n" + table + "\n")
    with pytest.raises(ConfigError) as e:
        S.load(f)
    msg = str(e.value)
    assert str(f) in msg and f"key '{key}'" in msg and needle in msg and "\n" not in msg


def test_the_table_sets_the_options_and_the_flags_win(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(tiny_toml() + '[executor]\nexecutor = "submitit"\ncluster = "slurm"\npartition = "cpu"\ntime = 30\n'
                 'sbatch = { qos = "low", exclusive = true }\n')
    spec = S.load(f)
    o = CL.resolve(spec.executor, "f", {"partition": "gpu", "sbatch": CL.sbatch_from_cli(["qos=high", "mem=8G"])})
    assert (o.executor, o.cluster, o.partition, o.time) == ("submitit", "slurm", "gpu", 30)
    assert o.sbatch == {"qos": "high", "exclusive": True, "mem": "8G"}
    assert CL.job_minutes(1800, 1, o) == 30 and CL.job_minutes(100, 3, CL.ClusterOptions()) == 5 + 5
    assert not CL.resolve(spec.executor, "f", {"executor": "local"}).submitit  # the same file, run on this machine
    with pytest.raises(ConfigError, match="--partition"):
        CL.resolve({}, "f", {"partition": "gpu"})  # a submitit flag without submitit


def test_bad_flags_and_a_missing_submitit_refuse_before_anything_is_submitted(cli_in_process, tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "s.toml"
    f.write_text(tiny_toml())
    cases = [(["--partition", "gpu"], "submitit"),
             (["--executor", "submitit", "--sbatch", "partition=gpu"], "--partition"),
             (["--executor", "submitit", "--time", "0"], "--time"),
             (["--executor", "submitit", "--cluster", "local", "--nodes", "2"], "local cluster"),
             (["--executor", "submitit", "--slots", "2"], "--max-jobs")]
    for args, needle in cases:
        code, out, err = cli_in_process("sweep", "run", str(f), "--store", "s.jsonl", *args)
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("sweep ", "warning"))]
        assert code == 2 and len(lines) == 1 and needle in lines[0], (args, err)
    monkeypatch.setitem(sys.modules, "submitit", None)  # not installed
    code, out, err = cli_in_process("sweep", "run", str(f), "--store", "s.jsonl", "--executor", "submitit")
    assert code == 2 and err.strip().splitlines() == ["error: --executor submitit needs the submitit package: "
                                                      "pip install 'ovprof[slurm]'"]
    assert not (tmp_path / "s.jsonl.submitit").exists() and not (tmp_path / "s.jsonl.submitit.jsonl").exists()


def test_sweep_run_help_names_the_options_without_importing_submitit_or_torch():
    code = ("import sys; from typer.testing import CliRunner; from ovprof.cli import app; "
            "r = CliRunner().invoke(app, ['sweep', 'run', '--help'], env={'COLUMNS': '200'}); "
            "assert r.exit_code == 0, r.output; print(r.output); "
            "print([m for m in ('submitit', 'torch') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("[]"), r.stdout + r.stderr
    for flag in ("--executor", "--cluster", "--partition", "--nodes", "--gpus-per-node", "--time", "--account",
                 "--sbatch", "--submitit-folder", "--max-jobs"):
        assert flag in r.stdout, flag


def test_nodes_per_point_follow_gpus_per_node_and_must_split_evenly():
    o = CL.ClusterOptions(executor="submitit", cluster="slurm", gpus_per_node=8)
    assert [CL.check_point(w, o, "p") for w in (1, 8, 16)] == [1, 1, 2]
    with pytest.raises(UsageError, match="does not split"):
        CL.check_point(3, CL.ClusterOptions(executor="submitit", cluster="slurm", nodes=2), "p")
    with pytest.raises(UsageError, match="local cluster"):
        CL.check_point(16, CL.ClusterOptions(executor="submitit", cluster="local", gpus_per_node=8), "p")


# -- a node's share of a multi-node point ---------------------------------------------------------------


def test_a_node_group_from_slurm_variables_gives_torchrun_the_right_ranks(monkeypatch, tmp_path):
    import submitit.helpers

    for k in ("MASTER_PORT", "MASTER_ADDR", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(k, raising=False)
    env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
           "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    g = CL.node_group(tmp_path)
    assert (g.nnodes, g.node_rank, g.master_addr) == (2, 1, "gpu07")
    assert g.master_port == submitit.helpers.TorchDistributedEnvironment().master_port  # every node agrees
    assert g.result_dir == tmp_path / "ranks-4242"
    assert g.torchrun(16) == ["--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "8", "--master_addr", "gpu07",
                              "--master_port", str(g.master_port)]
    assert g.ranks(16) == list(range(8, 16))  # torchrun: RANK = node_rank * 8 + LOCAL_RANK, WORLD_SIZE 16
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")
    assert CL.node_group(tmp_path) is None


# -- the inbox ----------------------------------------------------------------------------------------------


def test_the_inbox_merge_appends_each_record_once_and_keeps_an_unfinished_search(tmp_path):
    s = tmp_path / "s.jsonl"
    done = R.parse(fake_jobs.canned_record(RunConfig(**TINY)))
    trial = R.parse({**fake_jobs.canned_record(RunConfig(**{**TINY, "batch": 4})), "max_batch_search": "abc"})
    store.append(inbox.job_file(s, "a-1"), done.to_json())
    store.append(inbox.job_file(s, "b-2"), trial.to_json())
    R.append(s, done)  # a merge killed after its append, before it removed the file
    added = inbox.Merger(s).merge()
    assert [r.run_id for r in added] == [trial.run_id]
    assert [r.run_id for r in R.read_store(s).runs] == [done.run_id, trial.run_id]
    assert not inbox.job_file(s, "a-1").exists() and inbox.job_file(s, "b-2").exists()  # the search goes on
    assert inbox.Merger(s).merge() == [] and len(R.read_store(s).runs) == 2


# -- a fake Slurm ---------------------------------------------------------------------------------------------


def _fake_slurm(tmp_path: Path, env) -> Path:
    state = tmp_path / "slurm"
    fake_slurm.install(tmp_path / "bin", state)
    env.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env.setenv("OVPROF_SUBMITIT_POLL_S", "0.1")
    return state


def test_fake_slurm_one_array_reattaches_a_running_job_and_resubmits_a_dead_one(tmp_path, monkeypatch):
    """Also: a job that dies while watched (no record, no result) becomes an error row, run again next time."""
    state = _fake_slurm(tmp_path, monkeypatch)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(submit, "point_job", fake_jobs.point_job)  # jobs record at once: the driver is under test
    f = tmp_path / "s.toml"
    f.write_text(tiny_toml(drop=("batch",)) + "[axes]\nbatch = [1, 2, 3, 4]\n")
    exp = S.expand(S.load(f))
    opts = ExecOptions(store=str(tmp_path / "s.jsonl"), timeout_s=60)
    p1, p2, p3, p4 = exp.plans
    (tmp_path / "s.jsonl.submitit").mkdir()
    (tmp_path / "s.jsonl.submitit" / f"die-{p4.run_id}").write_text("")
    # A sweep killed earlier left two jobs in the ledger: p2's still runs, p3's died without a record.
    folder = str(tmp_path / "s.jsonl.submitit" / "%j")
    for plan, job in ((p2, "901"), (p3, "902")):
        store.append(submit.ledger_path(opts.store), {"run_id": plan.run_id, "job_id": job, "folder": folder,
                                                      "cluster": "slurm"})
    (state / "jobs").mkdir()
    (state / "jobs" / "901").write_text("RUNNING")
    (state / "jobs" / "902").write_text("FAILED")

    def job_901_ends():  # its record reaches its inbox file, then Slurm says it completed
        time.sleep(1.0)
        store.append(inbox.job_file(opts.store, f"{p2.run_id}-901"), fake_jobs.canned_record(p2.config))
        (state / "jobs" / "901").write_text("COMPLETED")

    ender = threading.Thread(target=job_901_ends)
    ender.start()
    copts = CL.resolve({}, None, {"executor": "submitit", "cluster": "slurm", "partition": "cpu", "max_jobs": 2})
    out = submit.run_sweep_submitit(exp, opts, copts, reporter=Reporter(4, live=False))
    ender.join()
    assert out.counts == {"ok": 3, "error": 1} and out.exit_code == 1 and not out.left_running
    runs = {r.run_id: r for r in R.read_store(opts.store).runs}
    assert sorted(runs) == sorted(p.run_id for p in exp.plans)  # one row each
    assert runs[p4.run_id].status == "error" and runs[p4.run_id].error["type"] == "JobDied"
    sbatch = [c for c in fake_slurm.calls(state) if c["tool"] == "sbatch"]
    assert len(sbatch) == 1  # p1, p3 and p4 in one array; p2 waited for
    script = (state / "sbatch-1001.sh").read_text()
    assert "#SBATCH --array=0-2%2" in script and "#SBATCH --partition=cpu" in script
    starts = (tmp_path / "s.jsonl.submitit" / "starts.jsonl").read_text().splitlines()
    assert sorted(json.loads(s)["run_id"] for s in starts) == sorted([p1.run_id, p3.run_id, p4.run_id])
    ledger = submit.read_ledger(opts.store)
    assert ledger[p2.run_id]["job_id"] == "901" and ledger[p3.run_id]["job_id"].startswith("1001_")
    assert not any(inbox.inbox_dir(opts.store).iterdir())
    (tmp_path / "s.jsonl.submitit" / f"die-{p4.run_id}").unlink()
    out = submit.run_sweep_submitit(exp, opts, copts, reporter=Reporter(4, live=False))  # the error row runs again
    assert out.skipped == 3 and out.counts == {"ok": 1} and R.latest(R.read_store(opts.store).runs)[p4.run_id].done


def test_a_point_another_process_holds_is_waited_for_and_run_once_its_holder_dies(tmp_path, monkeypatch):
    from test_reliability import _hold_claim

    state = _fake_slurm(tmp_path, monkeypatch)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(submit, "point_job", fake_jobs.point_job)
    f = tmp_path / "s.toml"
    f.write_text(tiny_toml())
    exp = S.expand(S.load(f))
    opts = ExecOptions(store=str(tmp_path / "s.jsonl"), timeout_s=60)
    holder = _hold_claim(Path(opts.store), exp.plans[0].run_id)  # a local sweep running it, say; then it dies
    killed = []
    killer = threading.Timer(1.0, lambda: (holder.kill(), killed.append(time.time())))
    killer.start()
    try:
        copts = CL.resolve({}, None, {"executor": "submitit", "cluster": "slurm"})
        out = submit.run_sweep_submitit(exp, opts, copts, reporter=Reporter(1, live=False))
    finally:
        killer.join()
        holder.wait()
    assert out.counts == {"ok": 1} and len(R.read_store(opts.store).runs) == 1
    (sbatch,) = [c for c in fake_slurm.calls(state) if c["tool"] == "sbatch"]
    assert sbatch["t"] > killed[0]  # submitted only once its holder was gone


def test_inside_a_job_a_done_or_claimed_point_is_not_run_again(tmp_path, monkeypatch):
    from ovprof.results import claims
    from ovprof.runner import launch

    for k, v in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "77", "SUBMITIT_LOCAL_NTASKS": "1",
                 "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_GLOBALID": "0",
                 "SUBMITIT_LOCAL_LOCALID": "0", "OVPROF_ZYGOTE": "1"}.items():
        monkeypatch.setenv(k, v)
    ran = []

    def fake_run_point(cfg, opts, **kw):
        ran.append(opts)
        rec = R.parse(fake_jobs.canned_record(cfg))
        R.append(opts.store, rec)
        return rec

    monkeypatch.setattr(launch, "run_point", fake_run_point)
    f = tmp_path / "s.toml"
    f.write_text(tiny_toml())
    (plan,) = S.expand(S.load(f)).plans
    opts = ExecOptions(store=str(tmp_path / "s.jsonl"))
    with claims.claim(opts.store, plan.run_id):  # a live process holds it (another job, another sweep)
        assert submit.point_job(plan, opts, "s", None, str(tmp_path))["outcome"] == "held"
    assert submit.point_job(plan, opts, "s", None, str(tmp_path)) == {"outcome": "ran", "status": "ok",
                                                                       "run_id": plan.run_id}
    (o,) = ran
    assert o.store == str(inbox.job_file(opts.store, f"{plan.run_id}-77")) and o.log_dir == str(tmp_path / "logs")
    assert os.environ["OVPROF_ZYGOTE"] == "0"  # one point per job: no zygote
    # done (its record still in the inbox, not merged yet): a second job for it returns at once
    assert submit.point_job(plan, opts, "s", None, str(tmp_path))["outcome"] == "done" and len(ran) == 1
    # --rerun: a record from before the sweep began does not count
    assert submit.point_job(plan, opts, "s", "9999", str(tmp_path))["outcome"] == "ran" and len(ran) == 2


@pytest.mark.slow
def test_fake_slurm_a_two_node_point_rendezvous_and_records(tmp_path, monkeypatch):
    """sbatch carries every option; the job's two tasks ("nodes") each start torchrun; rank 0's node records."""
    state = _fake_slurm(tmp_path, monkeypatch)
    f = tmp_path / "s.toml"
    f.write_text(tiny_toml(world_size=2, steps=1, bucket_elems=5e5))
    out = tmp_path / "s.jsonl"
    cmd = [sys.executable, "-m", "ovprof.cli", "sweep", "run", str(f), "--store", str(out), "--timeout", "300",
           "--executor", "submitit", "--cluster", "slurm", "--partition", "debug", "--nodes", "2",
           "--gpus-per-node", "1", "--time", "7", "--account", "proj", "--sbatch", "qos=high", "--sbatch", "exclusive"]
    r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, COLUMNS="200"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    script = (state / "sbatch-1001.sh").read_text()
    for line in ("--partition=debug", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1", "--time=7",
                 "--account=proj", "--qos=high", "--exclusive", "--job-name=ovprof-"):
        assert f"#SBATCH {line}" in script, line
    (rec,) = R.read_store(out).runs
    assert rec.status == "ok" and rec.config["world_size"] == 2 and [p["rank"] for p in rec.per_rank] == [0, 1]
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert len(logs) == 2 and logs[1].endswith("-node1.log")  # node 1's torchrun log beside node 0's


# -- submitit's local executor: the acceptance ------------------------------------------------------------


@pytest.mark.slow
def test_ci_memory_on_the_local_cluster_survives_a_killed_parent(tmp_path):
    """ci-memory's ZeRO-0 caption and clip points (the baseline's run_ids): the parent is SIGKILLed while the
    first job runs; the rerun re-attaches to it and submits the other; every point once, memory as serial."""
    text = (ROOT / "sweeps/ci-memory.toml").read_text()
    subset = (text.replace("zero = [0, 2]", "zero = [0]")
              .replace('objective = ["caption", "openvision", "clip"]', 'objective = ["caption", "clip"]')
              .replace("mask_ratio = [0.65, 0.0, 0.0]", "mask_ratio = [0.65, 0.0]"))
    f = tmp_path / "ci.toml"
    f.write_text(subset)
    plans = S.expand(S.load(f)).plans
    assert len(plans) == 2  # the file changed as meant
    out = tmp_path / "ci.jsonl"
    cmd = [sys.executable, "-m", "ovprof.cli", "sweep", "run", str(f), "--store", str(out), "--timeout", "300",
           "--executor", "submitit", "--cluster", "local"]
    env = dict(os.environ, COLUMNS="200")
    ledger = submit.ledger_path(out)
    with open(tmp_path / "first.log", "w") as log:  # a file: the jobs outlive the parent and keep its stdout
        first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (ledger.exists() and ledger.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    first.kill()  # SIGKILL: no handler runs, the submitted job goes on alone
    first.wait()
    assert len(store.read(ledger)) == 1, (tmp_path / "first.log").read_text()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "re-attached to 1 job(s)" in r.stderr and "submitted 1 point(s)" in r.stderr
    runs = R.read_store(out).runs
    assert sorted(x.run_id for x in runs) == sorted(p.run_id for p in plans)  # nothing lost, nothing twice
    assert sorted(e["run_id"] for e in store.read(ledger)) == sorted(p.run_id for p in plans)  # one job each
    logs = [p.name.split("-")[0] for p in (tmp_path / "logs").iterdir()]
    assert sorted(logs) == sorted(p.run_id for p in plans)  # one worker started per point
    baseline = {p["run_id"]: p["metrics"]["peak_tracked_bytes"]
                for p in json.loads((ROOT / "reports/baselines/cpu-ci-memory.json").read_text())["points"]}
    assert {x.run_id: x.metrics["peak_tracked_bytes"] for x in runs} == {x.run_id: baseline[x.run_id] for x in runs}
