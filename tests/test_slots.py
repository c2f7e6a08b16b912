"""Device slots: disjoint devices per slot, every point once, a search sequential inside its slot, Ctrl-C stops all."""

from __future__ import annotations

import threading
import time

import pytest

from ovprof.config import ExecOptions
from ovprof.errors import UsageError
from ovprof.results import record as R
from ovprof.runner import launch
from ovprof.runner.slots import Slot, make_slots
from ovprof.sweep import execute
from ovprof.sweep import spec as S

from conftest import tiny_toml
from test_sweep_execute import FakeRunPoint


def test_cpu_slots_are_disjoint_core_sets_with_matching_threads(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    slots = make_slots(3, 1, cuda=False)
    cores = [set(s.cores) for s in slots]
    assert all(len(c) == 2 for c in cores) and not set.intersection(*cores)
    assert slots[0].env(world_size=1) == {"OMP_NUM_THREADS": "2"} and slots[0].env(world_size=2)["OMP_NUM_THREADS"] == "1"
    with pytest.raises(UsageError, match="--slots 3"):
        make_slots(3, 4, cuda=False)  # a 4-rank point needs 4 cores, a slot has 2
    with pytest.raises(UsageError):
        make_slots(9, 1, cuda=False)


def test_gpu_slots_are_disjoint_visible_device_sets(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5,7")
    slots = make_slots(2, 2, cuda=True)
    assert [s.gpus for s in slots] == [("2", "3"), ("5", "7")]
    assert slots[1].env(2) == {"CUDA_VISIBLE_DEVICES": "5,7"}
    with pytest.raises(UsageError, match="GPU"):
        make_slots(4, 2, cuda=True)
    assert make_slots(1, 1) == [Slot(0)]


def _exp(tmp_path, text):
    f = tmp_path / "s.toml"
    f.write_text(tiny_toml(drop=("batch",)) + text)
    return S.expand(S.load(f)), ExecOptions(store=str(tmp_path / "s.jsonl"))


def test_two_slots_run_every_point_once_side_by_side(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    exp, opts = _exp(tmp_path, "[axes]\nbatch = [1, 2, 3, 4, 5, 6]\n")
    running, overlap, seen_slots = [0], [0], []
    lock = threading.Lock()
    fake = FakeRunPoint()
    orig = fake.__call__

    def run(cfg, o, **kw):
        with lock:
            running[0] += 1
            overlap[0] = max(overlap[0], running[0])
            seen_slots.append(kw["slot"].cores)
        time.sleep(0.2)
        try:
            return orig(cfg, o, **kw)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(launch, "run_point", run)
    out = execute.run_sweep(exp, opts, slots=2)
    assert out.exit_code == 0 and overlap[0] == 2
    assert set(seen_slots) == {(0,), (1,)}
    ids = [r.run_id for r in R.read_store(opts.store).runs]
    assert sorted(ids) == sorted(p.run_id for p in exp.plans)  # each once
    assert {o.slot for o in out.ran} == {0, 1}


def test_ctrl_c_in_one_slot_stops_every_slot_and_records_nothing_more(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    exp, opts = _exp(tmp_path, "[axes]\nbatch = [1, 2, 3, 4, 5, 6, 7, 8]\n")
    fake = FakeRunPoint(interrupt_on=3)
    monkeypatch.setattr(launch, "run_point", lambda cfg, o, **kw: (time.sleep(0.1), fake(cfg, o, **kw))[1])
    out = execute.run_sweep(exp, opts, slots=2)
    assert out.interrupted == "SIGINT" and out.exit_code == 130
    assert len(R.read_store(opts.store).runs) <= 3 and len(fake.calls) <= 4


def test_an_executor_table_sets_slots_and_is_checked(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(tiny_toml() + "[executor]\nslots = 2\n")
    assert S.load(f).slots == 2
    f.write_text(tiny_toml() + "[executor]\nslot = 2\n")
    with pytest.raises(Exception, match="slots"):
        S.load(f)
    f.write_text(tiny_toml() + "[executor]\nslots = 0\n")
    with pytest.raises(Exception, match="positive"):
        S.load(f)
