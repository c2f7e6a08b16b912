"""The executor seam: another executor plugs in without touching record or store code; ports never collide."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import pytest

from ovprof.config import ExecOptions, RunConfig
from ovprof.results import record as R
from ovprof.runner import executor as X
from ovprof.runner.launch import run_point

TINY = dict(encoder="vit-debug", vocab_size=512, caption_len=16, text_len=8, batch=2, steps=2, warmup=1)


class CannedExecutor:
    """An executor that 'runs' each job by returning canned rank files: what a cluster executor would hand back."""

    def __init__(self, ranks, exit_code=0, timed_out=False):
        self.ranks, self.exit_code, self.timed_out, self.jobs = ranks, exit_code, timed_out, []

    def run(self, jobs):
        for job in jobs:
            self.jobs.append(job)
            yield X.JobResult(job=job, ranks=self.ranks, exit_code=self.exit_code, timed_out=self.timed_out,
                              started_at="t0", finished_at="t1", wall_time_s=2.0)


def test_a_new_executor_plugs_in_and_its_results_become_records(tmp_path):
    ranks = [{"rank": 0, "status": "ok", "metrics": {"step_times_ms": [4.0], "step_time_ms_median": 4.0,
                                                     "peak_tracked_bytes": 123}, "env": {"host": "elsewhere"}}]
    ex = CannedExecutor(ranks)
    cfg = RunConfig(**TINY)
    store = tmp_path / "s.jsonl"
    rec = run_point(cfg, ExecOptions(store=str(store)), executor=ex, sweep="x")
    assert [j.config.run_id for j in ex.jobs] == [cfg.run_id]
    assert ex.jobs[0].ds_config["train_micro_batch_size_per_gpu"] == 2
    assert rec.status == "ok" and rec.metrics["peak_tracked_bytes"] == 123 and rec.env == {"host": "elsewhere"}
    assert R.read_store(store).runs == [rec]


def test_an_executor_reporting_a_timeout_gives_a_timeout_record(tmp_path):
    rec = run_point(RunConfig(**TINY), ExecOptions(store=str(tmp_path / "s.jsonl"), timeout_s=7),
                    executor=CannedExecutor([], exit_code=-15, timed_out=True))
    assert rec.status == "timeout" and "7 s" in rec.error["message"]


def test_concurrent_port_leases_are_distinct():
    with contextlib.ExitStack() as stack:
        ports = [stack.enter_context(X.port_lease()) for _ in range(40)]
    assert len(set(ports)) == 40 and all(X.PORT_RANGE[0] <= p < X.PORT_RANGE[1] for p in ports)


def test_a_port_leased_by_another_process_is_never_handed_out(monkeypatch):
    with X.port_lease() as held_here:
        pass
    p = held_here
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(X.PORT_LOCK_DIR / f'{p}.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(X, "PORT_RANGE", (p, p + 2))  # two candidates, one of them taken
        for _ in range(10):
            with X.port_lease() as got:
                assert got == p + 1
    finally:
        holder.kill()
        holder.wait()
    t0 = time.monotonic()
    with X.port_lease() as again:  # released when its holder died
        assert again in (p, p + 1) and time.monotonic() - t0 < 5


# -- the devices the user chose ----------------------------------------------------------------------------------

def _deepspeed_command(tmp_path, environ, world_size=2):
    cfg = RunConfig(**TINY, world_size=world_size)
    return X.worker_command(cfg, ExecOptions(launcher="deepspeed"), tmp_path / "spec.json", tmp_path / "out",
                            29500, environ=environ)


def test_deepspeed_launcher_names_the_visible_devices_not_the_first_n(tmp_path):
    from deepspeed.launcher import runner as ds_runner

    cmd = _deepspeed_command(tmp_path, {"CUDA_VISIBLE_DEVICES": "2,3"})
    assert "--num_gpus" not in cmd and cmd[cmd.index("--include") + 1] == "localhost:2,3"
    # DeepSpeed's own parser, on a 4-GPU host, keeps exactly devices 2 and 3
    args = ds_runner.parse_args(cmd[cmd.index("deepspeed.launcher.runner") + 1:])
    assert (args.include, args.num_gpus) == ("localhost:2,3", -1)
    assert dict(ds_runner.parse_inclusion_exclusion({"localhost": 4}, args.include, "")) == {"localhost": [2, 3]}
    # more devices visible than ranks: the first world_size of them, in the user's order
    cmd = _deepspeed_command(tmp_path, {"CUDA_VISIBLE_DEVICES": "5, 1,7"})
    assert cmd[cmd.index("--include") + 1] == "localhost:5,1"


def test_without_cuda_visible_devices_the_launcher_keeps_num_gpus(tmp_path):
    for environ in ({}, {"CUDA_VISIBLE_DEVICES": ""}):
        cmd = _deepspeed_command(tmp_path, environ)
        assert cmd[cmd.index("--num_gpus") + 1] == "2" and "--include" not in cmd


def test_visible_devices_the_launcher_cannot_use_are_one_clear_error(tmp_path):
    import pytest

    from ovprof.errors import ConfigError

    with pytest.raises(ConfigError, match="UUIDs"):
        _deepspeed_command(tmp_path, {"CUDA_VISIBLE_DEVICES": "GPU-8a1b,GPU-77c2"})
    with pytest.raises(ConfigError, match="fewer than world_size 2"):
        _deepspeed_command(tmp_path, {"CUDA_VISIBLE_DEVICES": "3"})
    # torchrun leaves CUDA_VISIBLE_DEVICES alone: nothing to translate
    cfg = RunConfig(**TINY, world_size=2)
    cmd = X.worker_command(cfg, ExecOptions(), tmp_path / "s", tmp_path / "o", 29500,
                           environ={"CUDA_VISIBLE_DEVICES": "GPU-8a1b,GPU-77c2"})
    assert "torch.distributed.run" in cmd


def test_the_zygote_serves_on_a_cpu_machine_and_refuses_nothing_it_cannot_fork():
    from ovprof.runner.zygote import Zygote

    z = Zygote()
    try:
        assert z.start(), z.refused  # warm, single-threaded after its imports
        assert z.proc.poll() is None
    finally:
        z.close()


@pytest.mark.slow
def test_a_forked_worker_measures_exactly_what_a_fresh_one_does(tmp_path, monkeypatch):
    cfg = RunConfig(**TINY, objective="caption", mask_ratio=0.5)
    warm = run_point(cfg, ExecOptions(store=str(tmp_path / "a.jsonl")))
    monkeypatch.setenv("OVPROF_ZYGOTE", "0")
    cold = run_point(cfg, ExecOptions(store=str(tmp_path / "b.jsonl")))
    assert warm.status == cold.status == "ok"
    assert warm.metrics["peak_tracked_bytes"] == cold.metrics["peak_tracked_bytes"]
    assert warm.metrics["tracked_breakdown_bytes"] == cold.metrics["tracked_breakdown_bytes"]
