"""The record module: one builder, one parser, one normaliser, one "latest"; a bad line never stops a reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ovprof import metrics as M
from ovprof.config import RunConfig
from ovprof.results import record as R
from ovprof.results import store

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(encoder="vit-debug", vocab_size=512, caption_len=16, text_len=8, batch=2, steps=2, warmup=1)


def good(**kw) -> dict:
    c = RunConfig(**{**TINY, **kw})
    return {"schema_version": R.SCHEMA_VERSION, "kind": "run", "run_id": c.run_id, "status": "ok",
            "config": c.resolved().to_dict(), "metrics": {"peak_tracked_bytes": 1000, "step_times_ms": [1.0, 2.0]},
            "null_reasons": {}, "env": {"torch": "x"}}


# -- the hostile lines of the issue, and their class ------------------------------------------------------

def _bad_lines() -> dict[str, bytes]:
    newer = good(objective="clip")
    newer["schema_version"] = 99
    oops = good(objective="openvision")
    oops["metrics"] = "oops"
    string_num = good(batch=4)
    string_num["metrics"]["peak_tracked_bytes"] = "12"
    string_cfg = good(batch=8)
    string_cfg["config"]["batch"] = "8"
    return {
        "torn": json.dumps(good(zero=1)).encode()[:57],
        "not an object": b"[1, 2, 3]",
        "schema 99": json.dumps(newer).encode(),
        "metrics oops": json.dumps(oops).encode(),
        "string metric": json.dumps(string_num).encode(),
        "string config": json.dumps(string_cfg).encode(),
        "no run_id": json.dumps({k: v for k, v in good(zero=2).items() if k != "run_id"}).encode(),
        "bad status": json.dumps({**good(zero=3), "status": "fine"}).encode(),
        "bad kind": json.dumps({**good(seed=4), "kind": "note"}).encode(),
        "bool as number": json.dumps({**good(seed=5), "wall_time_s": True}).encode(),
        "list of text": json.dumps({**good(seed=6), "metrics": {"step_times_ms": ["a"]}}).encode(),
        "control chars": json.dumps({**good(seed=7), "status": "\x1b[31mred\x07"}).encode(),
    }


def hostile_store(path: Path) -> tuple[list[str], int]:
    """A store of good records with every bad line between them: (the good run_ids, the number of bad lines)."""
    goods = [good(), good(objective="clip"), good(objective="openvision")]
    bad = _bad_lines()
    with open(path, "wb") as f:
        f.write(json.dumps(goods[0]).encode() + b"\n")
        for line in bad.values():
            f.write(line + b"\n")
            f.write(b"\n")  # blank lines are not records and not warnings
        for g in goods[1:]:
            f.write(json.dumps(g).encode() + b"\n")
    return [g["run_id"] for g in goods], len(bad)


def test_every_bad_line_is_one_warning_naming_store_line_and_field(tmp_path):
    path = tmp_path / "s.jsonl"
    good_ids, n_bad = hostile_store(path)
    said: list[str] = []
    contents = R.read_store(path, warn=said.append)
    assert [r.run_id for r in contents.runs] == good_ids
    assert len(contents.warnings) == n_bad == len(said)
    for w in said:
        assert w.startswith(f"{path}: line ") and "skipped" in w
        assert all(ch.isprintable() for ch in w), w  # user bytes are escaped, never raw control characters
    text = "\n".join(said)
    for field in ("schema_version", "field 'metrics'", "metrics.peak_tracked_bytes", "config.batch", "run_id",
                  "status", "kind", "wall_time_s", "metrics.step_times_ms"):
        assert field in text, field
    assert "line 2:" in text and "not a whole JSON line" in text


def test_a_bad_line_is_warned_about_once_per_process(tmp_path, capsys):
    path = tmp_path / "s.jsonl"
    hostile_store(path)
    R.read_store(path)
    first = capsys.readouterr().err
    R.read_store(path)
    assert first.count("warning:") == len(_bad_lines()) and capsys.readouterr().err == ""


def test_missing_store_is_empty(tmp_path):
    c = R.read_store(tmp_path / "nope.jsonl")
    assert c.records == [] and c.warnings == []


# -- the normaliser -------------------------------------------------------------------------------------

def test_normaliser_fills_defaults_applies_legacy_rules_and_drops_unknown_fields():
    old = {"objective": "caption", "checkpointing": True, "retired_field": 3}
    n = R.normalize_config(old)
    assert list(n) == [f for f in RunConfig.__dataclass_fields__]
    assert n["checkpointing_text"] is True  # `checkpointing` meant every block before the split
    assert n["loss_impl"] == "eager" and "retired_field" not in n
    assert R.normalize_config({"objective": "clip"})["checkpointing_text"] is False


def test_every_committed_record_parses_without_a_warning():
    stores = sorted(ROOT.glob("reports/**/*.jsonl")) + [ROOT / "tests/fixtures/records.jsonl"]
    assert stores
    for p in stores:
        c = R.read_store(p, warn=None)
        assert c.warnings == [], (p, c.warnings[:2])
        assert c.runs, p
        for r in c.runs:
            assert r.derived is not None and r.derived["params"]["total"] > 0


# -- latest ---------------------------------------------------------------------------------------------

def test_latest_later_lines_win_and_prefer_done_keeps_a_finished_point():
    a_ok = R.parse({**good(), "status": "ok"})
    a_err = R.parse({**good(), "status": "error"})
    b = R.parse(good(objective="clip"))
    assert R.latest([a_ok, a_err, b])[a_ok.run_id].status == "error"
    assert R.latest([a_ok, a_err, b], prefer_done=True)[a_ok.run_id].status == "ok"
    assert R.latest([a_err])[a_err.run_id].status == "error"


# -- building: status, rank merge by registry, derived figures ----------------------------------------

def _rank(rank, step, peak, status="ok", **extra):
    return {"rank": rank, "status": status, "metrics": {
        "step_times_ms": [step], "step_time_ms_median": step, "peak_tracked_bytes": peak,
        "tracked_breakdown_bytes": {"parameters": peak}, "peak_rss_bytes": peak * 2, "torch_num_threads": rank + 1,
        "param_count": 7, **extra}, "null_reasons": {"mfu": "cpu"}, "env": {"rank": rank}}


def test_rank_merge_follows_each_metrics_registered_rule():
    merged, reasons = R.merge_ranks([_rank(0, step=5.0, peak=100), _rank(1, step=9.0, peak=300)])
    assert merged["step_time_ms_median"] == 9.0 and merged["step_times_ms"] == [9.0]  # slowest rank, whole
    assert merged["peak_tracked_bytes"] == 300 and merged["peak_rss_bytes"] == 600  # max
    assert merged["tracked_breakdown_bytes"] == {"parameters": 300}  # from the rank at the peak
    assert merged["torch_num_threads"] == 1  # rank 0
    assert reasons == {"mfu": "cpu"}


def test_rank_merge_refuses_an_unregistered_metric():
    with pytest.raises(KeyError, match="not a registered metric"):
        R.merge_ranks([_rank(0, 1.0, 1, mystery_bytes=3)])


def test_every_registered_merge_rule_is_handled():
    ranks = [{"rank": i, "status": "ok", "metrics": {m: (i + 1 if M.get(m).shape == "scalar" else
                                                         [i] if M.get(m).shape == "list" else {"x": i})
                                                     for m in M.REGISTRY}} for i in range(2)]
    merged, _ = R.merge_ranks(ranks)
    assert set(merged) == set(M.REGISTRY)


@pytest.mark.parametrize("ranks,exit_code,timed_out,status,etype", [
    ([{"rank": 0, "status": "ok"}], 0, False, "ok", None),
    ([{"rank": 0, "status": "oom", "error": {"type": "OutOfMemoryError"}}], 3, False, "oom", "OutOfMemoryError"),
    ([{"rank": 0, "status": "ok"}], 0, True, "timeout", "Timeout"),
    ([], -9, False, "error", "WorkerDied"),
    ([{"rank": 0, "status": "ok"}], 1, False, "error", "WorkerDied"),
])
def test_status_comes_from_exit_status_and_rank_results(ranks, exit_code, timed_out, status, etype):
    got, err = R.classify(ranks, world_size=1, exit_code=exit_code, timed_out=timed_out, timeout_s=5)
    assert got == status and (err or {}).get("type") == etype
    if exit_code == -9:
        assert "SIGKILL" in err["message"]


def test_built_record_carries_derived_figures_and_round_trips_through_the_store(tmp_path):
    cfg = RunConfig(**TINY, objective="caption", mask_ratio=0.5)
    log = tmp_path / "w.log"
    log.write_text("boom\n")
    rec = R.build_run_record(cfg, {"zero_optimization": {"stage": 0}}, [_rank(0, 2.0, 10)], exit_code=0,
                             timed_out=False, timeout_s=9, log_path=log, started_at="t0", wall_time_s=1.0,
                             sweep="s")
    assert rec.status == "ok" and rec.sweep == "s"
    assert rec.derived["kept_tokens"] == cfg.kept_tokens == 8 and rec.derived["num_patches"] == 16
    assert rec.derived["fwd_gflops_per_image"] > 0 and rec.derived["params"]["decoder"] > 0
    assert rec.metrics["overhead_s"] == pytest.approx(1.0 - 0.002)
    path = tmp_path / "s.jsonl"
    R.append(path, rec)
    (back,) = R.read_store(path, warn=None).runs
    assert back == rec
    assert store.read(path)[0]["kind"] == "run"
