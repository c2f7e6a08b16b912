"""The levers study table and plot (ovprof/report/stacking.py): rows, ratios against the baseline, the chain."""

from __future__ import annotations

import json

import pytest

from ovprof.config import RunConfig
from ovprof.results import record as R

BASE = dict(encoder="vit-debug", res=64, vocab_size=2048, caption_len=128, text_len=80, steps=3, warmup=1,
            memory_budget_gib=0.25, bucket_elems=200000)
ENV = {"cpu_model": "test CPU", "torch": "2.13.0", "deepspeed": "0.19.8", "cpu_count": 2}
# (levers, peak bytes at batch 32, max batch): the baseline, caption-only, two levers alone, the chain
POINTS = [
    (dict(objective="openvision"), 240_000_000, 34),
    (dict(objective="caption"), 160_000_000, 48),
    (dict(objective="caption", mask_ratio=0.65), 150_000_000, 52),
    (dict(objective="caption", loss_impl="chunked"), 100_000_000, 98),
    (dict(objective="caption", checkpointing=True), 140_000_000, 53),
    (dict(objective="caption", mask_ratio=0.65, loss_impl="chunked"), 90_000_000, 110),
    (dict(objective="caption", mask_ratio=0.65, loss_impl="chunked", checkpointing=True), 60_000_000, None),
]


def _store(tmp_path):
    lines = []
    for over, peak, mb in POINTS:
        cfg = RunConfig(**BASE, batch=32, **over)
        lines.append(R.RunRecord(run_id=cfg.run_id, status="ok", config=cfg.resolved().to_dict(),
                                 metrics={"peak_tracked_bytes": peak, "step_time_ms_median": 100.0},
                                 env=ENV, sweep="levers-study").to_json())
        search = dict(cfg.resolved().to_dict(), batch="max", memory_budget_gib=0.125)  # searches: a smaller budget
        trial = RunConfig(**{**BASE, **over, "batch": 16, "memory_budget_gib": 0.125})  # its trials: no study rows
        lines.append(R.RunRecord(run_id=trial.run_id, status="ok", config=trial.resolved().to_dict(),
                                 metrics={"peak_tracked_bytes": peak // 2}, env=ENV, sweep="levers-study",
                                 max_batch_search=f"mb-{cfg.run_id}").to_json())
        lines.append(R.MaxBatchRecord(run_id=f"mb-{cfg.run_id}", status="ok" if mb else "error", config=search,
                                      max_batch=mb, env=ENV, sweep="levers-study").to_json())
    store = tmp_path / "levers.jsonl"
    store.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return store


def test_rows_ratios_and_chain(tmp_path):
    from ovprof.report.load import load
    from ovprof.report.stacking import chain, stacking_table

    f = stacking_table(load([_store(tmp_path)])).frame
    assert list(f["kind"]) == ["baseline", "caption-only", "alone", "alone", "alone", "stacked", "stacked"]
    assert list(f["levers"]) == ["OpenVision (baseline)", "caption-only", "+ mask 0.65", "+ fused CE (chunked)",
                                 "+ ckpt vision", "mask 0.65 + fused CE (chunked)",
                                 "mask 0.65 + fused CE (chunked) + ckpt vision"]
    for (_, peak, mb), (_, r) in zip(POINTS, f.iterrows()):
        assert r["memory_x"] == pytest.approx(240_000_000 / peak)
        if mb:
            assert r["max_batch"] == mb and r["max_batch_x"] == pytest.approx(mb / 34)
            assert r["max_batch_budget_gib"] == 0.125
        else:  # a failed search is a reason, never a number
            assert r["max_batch"] == "search error" and "this run search error" in r["max_batch_x"]
    # the waterfall: caption-only, + mask, + fused CE, + ckpt vision
    assert [f["levers"][i] for i in chain(f)] == ["caption-only", "+ mask 0.65", "mask 0.65 + fused CE (chunked)",
                                                  "mask 0.65 + fused CE (chunked) + ckpt vision"]


def test_absent_without_a_study(tmp_path):
    """Fewer than three levers varied (the savings and levers tables cover that): no table, no section."""
    from ovprof.report.load import load
    from ovprof.report.stacking import stacking_table

    lines = [json.loads(x) for x in _store(tmp_path).read_text().splitlines()]
    keep = [x for x in lines if x["config"]["loss_impl"] == "eager" and not x["config"]["checkpointing"]]
    store = tmp_path / "small.jsonl"
    store.write_text("".join(json.dumps(x) + "\n" for x in keep))
    assert stacking_table(load([store])).frame.empty


def test_report_writes_the_table_and_the_waterfall(tmp_path):
    from ovprof.report.render import write_report

    rep = write_report([str(_store(tmp_path))], tmp_path / "out")
    assert (tmp_path / "out" / "levers_study.png").stat().st_size > 0
    assert (tmp_path / "out" / "levers_study.csv").exists()
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Levers study" in md and "levers_study.png" in md
    assert any(p.file == "levers_study.png" for p in rep.plots)


def test_estimated_max_batch_beside_each_search(tmp_path):
    """The report's estimate section puts the analytic max batch under the search's budget beside what it found."""
    from ovprof.estimate import max_batch
    from ovprof.report.load import load
    from ovprof.report.tables import build

    f = build(load([_store(tmp_path)]))["estimated_max_batch"].frame
    assert len(f) == len(POINTS)
    for (over, _, mb), (_, r) in zip(POINTS, f.iterrows()):
        cfg = RunConfig(**BASE, batch=1, **over)
        want, _ = max_batch(cfg, int(0.125 * 2**30), "analytic", "native", limit=1 << 16)
        assert r["estimated_max_batch"] == want and r["limit"] == "budget 0.125 GiB"
        if mb:
            assert r["found_max_batch"] == mb and r["error_pct"] == pytest.approx(100 * (want / mb - 1))
        else:
            assert r["found_max_batch"] == "search error" and r["error_pct"] == "-"


def test_a_searchs_trials_are_one_savings_row(tmp_path):
    """Trials of a setting no fixed run has: one savings row, at the largest batch both sides ran ok; trials of a
    setting with fixed runs: no row of their own."""
    from ovprof.report.load import load
    from ovprof.report.tables import build

    lines = []
    for budget, fixed in ((0.125, False), (0.25, True)):
        for obj, oks in (("openvision", (8, 16)), ("caption", (8, 16, 24))):
            search = RunConfig(**{**BASE, "objective": obj, "batch": 1, "memory_budget_gib": budget})
            for b in (*oks, oks[-1] * 2):
                cfg = RunConfig(**{**BASE, "objective": obj, "batch": b, "memory_budget_gib": budget})
                ok = b in oks
                lines.append(R.RunRecord(run_id=cfg.run_id, status="ok" if ok else "oom",
                                         config=cfg.resolved().to_dict(),
                                         metrics={"peak_tracked_bytes": 1000 * b} if ok else {}, env=ENV,
                                         max_batch_search=f"mb-{search.run_id}").to_json())
            if fixed:
                cfg = RunConfig(**{**BASE, "objective": obj, "batch": 32, "memory_budget_gib": budget})
                lines.append(R.RunRecord(run_id=cfg.run_id, status="ok", config=cfg.resolved().to_dict(),
                                         metrics={"peak_tracked_bytes": 5}, env=ENV).to_json())
    store = tmp_path / "s.jsonl"
    store.write_text("".join(json.dumps(x) + "\n" for x in lines))
    f = build(load([store]))["savings"].frame
    rows = sorted(zip(f["batch_per_device"], f["other_settings"]))
    assert [b for b, _ in rows] == [16, 32], rows  # 0.125 GiB: batch 16 (both ok); 0.25 GiB: its fixed batch only
