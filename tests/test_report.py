"""`ovprof report` on frozen real records (tests/fixtures/records.jsonl): every number traced to a record.

No DeepSpeed here: the fixture holds 20 debug-size runs made by tests/fixtures/make_records.py
(caption/openvision/clip, mask ratios on both sides, ZeRO 0 and 2, an oom under a memory budget,
a timeout, one run_id measured twice) and two max-batch summaries shaped like `ovprof sweep`'s.
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, ovprof

FIXTURE = ROOT / "tests" / "fixtures" / "records.jsonl"
GIB = 2**30
VARIANT = ("objective", "mask_ratio", "mask_position")
BUDGET = 0.009


# -- helpers --------------------------------------------------------------------------------------


def raw_records() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def latest_runs() -> dict[str, dict]:
    out = {}
    for r in raw_records():
        if r.get("kind", "run") == "run":
            out[r["run_id"]] = r
    return out


def find(runs: dict, **cfg) -> dict:
    hits = [r for r in runs.values() if all(r["config"].get(k) == v for k, v in cfg.items())]
    assert len(hits) == 1, (cfg, [h["run_id"] for h in hits])
    return hits[0]


def row_of(frame: pd.DataFrame, **cells) -> pd.Series:
    hit = frame
    for k, v in cells.items():
        hit = hit[hit[k] == v]
    assert len(hit) == 1, (cells, len(hit))
    return hit.iloc[0]


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from ovprof.report.render import write_report

    out = tmp_path_factory.mktemp("report")
    store = out / "store.jsonl"
    shutil.copy(FIXTURE, store)
    rep = write_report([str(store)], out / "out", formats={"md", "html", "csv", "json"})
    return rep


# -- the savings table ----------------------------------------------------------------------------


def test_savings_ratios_equal_hand_computed_values(report):
    from ovprof.config import RunConfig
    from ovprof.results.record import run_config as config_from_record
    from ovprof.objectives import gflops_per_image

    runs = latest_runs()
    base = dict(batch=2, zero=0, memory_budget_gib=None)
    ov = find(runs, objective="openvision", mask_ratio=0.0, **base)
    cap = find(runs, objective="caption", mask_ratio=0.75, mask_position="decoder", **base)
    clip = find(runs, objective="clip", mask_ratio=0.0, **base)
    row = row_of(report.tables["savings"].frame, batch_per_device=2, zero=0, caption_variant="mask 0.75 (decoder)",
                 other_settings="no memory budget")
    m_ov, m_cap = ov["metrics"], cap["metrics"]
    assert row["openvision_step_ms_median"] == m_ov["step_time_ms_median"]
    assert row["caption_step_ms_p10"] == m_cap["step_time_ms_p10"]
    assert row["caption_step_ms_p90"] == m_cap["step_time_ms_p90"]
    assert row["clip_step_ms_median"] == clip["metrics"]["step_time_ms_median"]
    assert row["speedup_x"] == pytest.approx(m_ov["step_time_ms_median"] / m_cap["step_time_ms_median"], rel=1e-12)
    assert row["openvision_peak_tracked_gib"] == pytest.approx(m_ov["peak_tracked_bytes"] / GIB, rel=1e-12)
    assert row["tracked_saving_x"] == pytest.approx(m_ov["peak_tracked_bytes"] / m_cap["peak_tracked_bytes"],
                                                    rel=1e-12)
    assert row["rss_saving_x"] == pytest.approx(m_ov["peak_rss_bytes"] / m_cap["peak_rss_bytes"], rel=1e-12)
    f_ov = gflops_per_image(config_from_record(ov["config"]))["fwd_gflops_per_image"]
    f_cap = gflops_per_image(RunConfig(**{k: v for k, v in cap["config"].items()}))["fwd_gflops_per_image"]
    assert row["flops_x"] == pytest.approx(f_ov / f_cap, rel=1e-12)
    assert row["openvision_run_id"] == ov["run_id"] and row["caption_run_id"] == cap["run_id"]


def test_noisy_step_times_are_flagged(report):
    f = report.tables["savings"].frame
    wide = 0
    for _, r in f.iterrows():
        for s in ("openvision", "caption"):
            med, lo, hi = (r[f"{s}_step_ms_{k}"] for k in ("median", "p10", "p90"))
            if is_number(med) and (hi - lo) / med > 0.5:
                wide += 1
                break
    assert wide > 0  # the fixture was recorded on a busy machine
    assert any(n.startswith(f"{wide} of {len(f)} rows have a step time") for n in report.tables["savings"].notes)


def test_the_latest_record_of_a_run_id_wins(report):
    all_caps = [r for r in raw_records() if r.get("kind", "run") == "run" and r["config"]["objective"] == "caption"
                and r["config"]["mask_ratio"] == 0.75 and r["config"]["mask_position"] == "decoder"
                and r["config"]["batch"] == 2 and r["config"]["zero"] == 0
                and r["config"]["memory_budget_gib"] is None]
    assert len(all_caps) == 2 and all_caps[0]["run_id"] == all_caps[1]["run_id"]
    first, last = (r["metrics"]["step_time_ms_median"] for r in all_caps)
    assert first != last
    row = row_of(report.tables["savings"].frame, batch_per_device=2, zero=0, caption_variant="mask 0.75 (decoder)",
                 other_settings="no memory budget")
    assert row["caption_step_ms_median"] == last
    assert report.data.superseded == 1
    assert report.data.runs["run_id"].is_unique


def test_every_ratio_compares_runs_that_differ_in_the_objective_alone(report):
    runs = latest_runs()
    f = report.tables["savings"].frame
    compared = 0
    for _, row in f.iterrows():
        for col, a, b in (("speedup_x", "openvision", "caption"), ("tracked_saving_x", "openvision", "caption")):
            if not is_number(row[col]):
                continue
            ra, rb = runs[row[f"{a}_run_id"]], runs[row[f"{b}_run_id"]]
            strip = lambda c: {k: v for k, v in c.items() if k not in VARIANT}  # noqa: E731
            assert strip(ra["config"]) == strip(rb["config"])
            assert ra["config"]["objective"] != rb["config"]["objective"]
            assert (ra["env"]["cpu_model"], ra["env"]["torch"], ra["env"]["deepspeed"]) == \
                   (rb["env"]["cpu_model"], rb["env"]["torch"], rb["env"]["deepspeed"])
            assert ra["config"]["mask_ratio"] == 0  # the paper's OpenVision is unmasked
            compared += 1
    assert compared >= 8


def test_oom_timeout_and_missing_points_are_text_never_zero_or_nan(report):
    f = report.tables["savings"].frame
    b8 = row_of(f, batch_per_device=8, other_settings="memory budget 0.009 GiB")
    assert b8["openvision_step_ms_median"] == "oom" and b8["openvision_peak_tracked_gib"] == "oom"
    assert b8["speedup_x"] == "OpenVision oom" and b8["tracked_saving_x"] == "OpenVision oom"
    assert is_number(b8["caption_step_ms_median"])
    b16 = row_of(f, batch_per_device=16)
    assert b16["caption_step_ms_median"] == "oom"
    assert b16["openvision_step_ms_median"].startswith("no OpenVision run at batch 16")
    assert b16["speedup_x"] == "no OpenVision run; caption-only oom"
    b4 = row_of(f, batch_per_device=4, other_settings="no memory budget")
    assert b4["openvision_peak_tracked_gib"].startswith("no OpenVision run at batch 4")
    # no cell anywhere is NaN/None, and a failed run never shows as a 0
    for name, t in report.tables.items():
        for col in t.frame.columns:
            for v in t.frame[col]:
                assert v is not None and not (isinstance(v, float) and math.isnan(v)), (name, col)
    runs = report.tables["runs"].frame
    timeout = runs[runs["status"] == "timeout"].iloc[0]
    assert timeout["step_ms_median"] == "timeout" and "Timeout" in timeout["error"]
    oom_runs = runs[runs["status"] == "oom"]
    assert len(oom_runs) == 2 and (oom_runs["peak_tracked_gib"] == "oom").all()
    md = (report.out / "report.md").read_text()
    assert "| oom |" in md and "no OpenVision run at batch 16" in md


def test_max_batch_comes_from_the_search_whose_config_matches_apart_from_batch(report):
    mb = {r["config"]["objective"]: r for r in raw_records() if r.get("kind") == "max_batch"}
    f = report.tables["savings"].frame
    budget_rows = f[f["other_settings"] == "memory budget 0.009 GiB"]
    assert len(budget_rows) == 4
    for _, row in budget_rows.iterrows():
        assert row["caption_max_batch"] == mb["caption"]["max_batch"] == 8
        assert row["openvision_max_batch"] == mb["openvision"]["max_batch"] == 4
        assert row["max_batch_x"] == pytest.approx(8 / 4)
        assert row["clip_max_batch"] == "no max-batch search for CLIP"
    other = f[f["other_settings"] != "memory budget 0.009 GiB"]
    assert (other["max_batch_x"] == "no max-batch search").all()


def test_mask_ratio_table_has_both_sides_with_the_records_numbers(report):
    runs = latest_runs()
    t = report.tables["mask_ratio"].frame
    assert set(t["mask_position"]) == {"decoder", "encoder"}
    cap = t[t["objective"] == "caption"]
    assert sorted(zip(cap["mask_ratio"], cap["mask_position"])) == [
        (0.0, "decoder"), (0.5, "decoder"), (0.5, "encoder"), (0.75, "decoder"), (0.75, "encoder")]
    # masked openvision and FLIP-style clip appear here (and in no savings column); their records carry
    # checkpointing_text, added to RunConfig after the others were written: they still group together
    assert sorted(t[t["objective"] == "openvision"]["mask_ratio"]) == [0.0, 0.5]
    assert sorted(zip(*[t[t["objective"] == "clip"][c] for c in ("mask_ratio", "mask_position")])) == [
        (0.0, "decoder"), (0.5, "encoder")]
    for _, row in t.iterrows():
        r = runs[row["run_id"]]
        assert (r["config"]["mask_ratio"], r["config"]["mask_position"]) == (row["mask_ratio"], row["mask_position"])
        assert row["step_ms_median"] == r["metrics"]["step_time_ms_median"]
        assert row["peak_tracked_gib"] == pytest.approx(r["metrics"]["peak_tracked_bytes"] / GIB)
    enc = row_of(t, mask_ratio=0.75, mask_position="encoder")
    assert enc["visual_tokens_kept"] == "4/16"  # (32/8)^2 = 16 patches, round(16 * 0.25)


def test_zero_table_splits_the_peak_into_the_tracked_breakdown(report):
    runs = latest_runs()
    t = report.tables["zero"].frame
    assert {0, 2} <= set(t["zero"])
    parts = ("parameters", "gradients", "optimizer_state", "activations", "temporaries", "inputs", "other")
    ok = t[t["status"] == "ok"]
    assert len(ok) >= 6
    for _, row in ok.iterrows():
        bd = runs[row["run_id"]]["metrics"]["tracked_breakdown_bytes"]
        for k in parts:
            assert row[f"{k}_gib"] == pytest.approx(bd[k] / GIB)
        assert sum(row[f"{k}_gib"] for k in parts) == pytest.approx(row["peak_tracked_gib"])
        assert row["bucket_elems"] == 1_000_000
    md = (report.out / "report.md").read_text()
    assert "allocates its reduce bucket in full" in md and "1,000,000 elements" in md


def test_batch_table_marks_the_device_limit_and_max_batch(report):
    t = report.tables["batch"].frame
    budget = t[t["other_settings"] == "memory budget 0.009 GiB"]
    assert (budget["device_limit_gib"] == BUDGET).all()
    cap = budget[budget["variant"] == "caption mask 0.75 (decoder)"]
    assert list(cap["batch_per_device"]) == [2, 4, 8, 16] and list(cap["status"]) == ["ok", "ok", "ok", "oom"]
    assert (cap["max_batch"] == 8).all()


# -- the paper ------------------------------------------------------------------------------------


def test_debug_settings_get_the_paper_reference_block_never_adjacent_columns(report):
    from ovprof.report.tables import NOT_PAPER

    f = report.tables["savings"].frame
    assert (f["paper_setting"] == NOT_PAPER).all() and (f["paper_time_x"] == NOT_PAPER).all()
    assert report.tables["paper_comparison"].frame.empty
    ref = report.tables["paper_reference"]
    l14 = row_of(ref.frame, paper_setting="ViT-L/14@224")
    assert (l14["time_x"], l14["memory_x"], l14["max_batch_x"], l14["flops_x"]) == (1.46, 1.78, 4.0, 1.30)
    assert any("Settings differ" in n and "vit-debug@32" in n and "not comparable" in n for n in ref.notes)
    # the analytic FLOPs model on the paper's own architecture lands within a few percent of its figures
    assert l14["analytic_caption_gflops_per_image"] == pytest.approx(208.90, rel=0.03)
    assert l14["analytic_openvision_gflops_per_image"] == pytest.approx(271.75, rel=0.06)
    assert l14["analytic_flops_x"] == pytest.approx(l14["analytic_openvision_gflops_per_image"]
                                                    / l14["analytic_caption_gflops_per_image"])
    html_text = (report.out / "report.html").read_text()
    assert "Settings differ" in html_text and "271.75" in html_text and "1.46" in html_text


def test_paper_columns_stand_beside_a_paper_setting(tmp_path):
    """Relabel the batch-2 ZeRO-0 pair as ViT-L/14@224: the paper's figures fill adjacent columns."""
    from ovprof.results.record import run_config as config_from_record
    from ovprof.objectives import gflops_per_image
    from ovprof.report.load import load
    from ovprof.report.tables import build

    recs = []
    for r in raw_records():
        c = r["config"]
        if r.get("kind", "run") == "run" and c["batch"] == 2 and c["zero"] == 0 and c["memory_budget_gib"] is None \
                and c["objective"] in ("caption", "openvision") and c["mask_position"] == "decoder" \
                and c["mask_ratio"] in (0.0, 0.75):
            recs.append(dict(r, config=dict(c, encoder="vit-l14", res=224, decoder="dec-l", text_encoder="text-l")))
    store = tmp_path / "l14.jsonl"
    store.write_text("".join(json.dumps(r) + "\n" for r in recs))
    tables = build(load([store]))
    f = tables["savings"].frame
    row = row_of(f, caption_variant="mask 0.75 (decoder)")
    assert row["paper_setting"] == "ViT-L/14@224"
    assert (row["paper_openvision_time_h"], row["paper_caption_time_h"]) == (83.0, 57.0)
    assert row["paper_time_x"] == pytest.approx(83 / 57)
    assert (row["paper_openvision_memory_gb"], row["paper_caption_memory_gb"]) == (24.5, 13.8)
    assert row["paper_memory_x"] == pytest.approx(24.5 / 13.8)
    assert row["paper_max_batch_x"] == 4.0 and row["paper_flops_x"] == pytest.approx(271.75 / 208.90)
    for word in ("TPU v4", "JAX", "DeepSpeed", "fp32", "batch: 2 per device", "mask 0.75"):
        assert word in row["differs_from_paper"]
    cap_cfg = config_from_record(next(r["config"] for r in recs if r["config"]["mask_ratio"] == 0.75))
    assert row["caption_fwd_gflops_per_image"] == pytest.approx(gflops_per_image(cap_cfg)["fwd_gflops_per_image"])
    assert len(tables["paper_comparison"].frame) == len(f)


# -- files ----------------------------------------------------------------------------------------


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.external = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith(("data:", "#")):
                self.external.append((tag, a[key]))
        if tag in ("link", "script"):
            self.external.append((tag, a))


def test_html_is_self_contained_with_every_plot_embedded(report):
    pngs = sorted(report.out.glob("*.png"))
    p = _Imgs()
    p.feed((report.out / "report.html").read_text())
    p.close()
    assert p.external == []
    assert len(p.srcs) == len(pngs)
    assert all(s.startswith("data:image/png;base64,") for s in p.srcs)
    embedded = sorted(base64.b64decode(s.split(",", 1)[1]) for s in p.srcs)
    assert embedded == sorted(f.read_bytes() for f in pngs)


def test_plots_are_written_as_valid_pngs(report):
    pngs = sorted(report.out.glob("*.png"))
    names = {f.name for f in pngs}
    assert {"step_time.png", "peak_memory.png", "mask_ratio.png", "batch_memory.png", "zero_memory.png"} <= names
    for f in pngs:
        data = f.read_bytes()
        assert len(data) > 5000 and data[:8] == b"\x89PNG\r\n\x1a\n", f
    md = (report.out / "report.md").read_text()
    assert all(f"]({n})" in md for n in names)


def test_csv_and_json_round_trip(report):
    from ovprof.report.render import table_records

    doc = json.loads((report.out / "tables.json").read_text())
    for name, t in report.tables.items():
        assert doc["tables"][name]["rows"] == table_records(t), name
        if t.frame.empty:
            continue
        back = pd.read_csv(report.out / f"{name}.csv", keep_default_na=False)
        assert list(back.columns) == list(t.frame.columns)
        for col in t.frame.columns:
            for want, got in zip(t.frame[col], back[col]):
                if is_number(want):
                    assert float(got) == pytest.approx(float(want), rel=1e-12), (name, col)
                else:
                    assert str(got) == str(want), (name, col)
    sav = doc["tables"]["savings"]["rows"]
    assert any(r["speedup_x"] == "OpenVision oom" for r in sav)
    assert all(any(u in h for u in ("ms", "GiB", " x", "GFLOPs", "batch", "ranks", "ZeRO", "px", "masking",
                                    "precision", "settings"))
               for h in doc["tables"]["savings"]["columns"].values())


def test_formats_flag_writes_only_what_is_asked(tmp_path):
    from ovprof.report.render import write_report

    rep = write_report([str(FIXTURE)], tmp_path / "o", formats={"csv"})
    names = {p.name for p in (tmp_path / "o").iterdir()}
    assert "savings.csv" in names and "report.md" not in names and "report.html" not in names
    assert "tables.json" not in names and sum(n.endswith(".png") for n in names) == len(rep.plots) >= 3


# -- the command line -----------------------------------------------------------------------------


def test_cli_writes_the_report_directory(tmp_path):
    (tmp_path / "results").mkdir()
    shutil.copy(FIXTURE, tmp_path / "results" / "fix.jsonl")
    r = ovprof("report", "--sweep", "fix", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "reports" / "fix"
    for name in ("report.md", "report.html", "savings.csv", "tables.json", "step_time.png"):
        assert (out / name).is_file(), name
    assert "Savings" in r.stdout and "OpenVision oom" in r.stdout and "orientation only" in r.stdout


def test_default_stores_and_names(tmp_path, monkeypatch):
    from ovprof.commands.report import resolve_stores

    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "b.jsonl").write_text("")
    assert resolve_stores([], None) == (["results/b.jsonl"], "b")
    (tmp_path / "results" / "a.jsonl").write_text("")
    assert resolve_stores([], None) == (["results/a.jsonl", "results/b.jsonl"], "combined")
    assert resolve_stores([], "a") == (["results/a.jsonl"], "a")
    assert resolve_stores([Path("results/b.jsonl")], None) == (["results/b.jsonl"], "b")


@pytest.mark.parametrize("args,needle", [
    (["report", "missing.jsonl"], "missing.jsonl: no such store"),
    (["report", "--sweep", "nope"], "results/nope.jsonl"),
    (["report"], "results/*.jsonl matches nothing"),
    (["report", str(FIXTURE), "--format", "md,pdf"], "unknown format pdf"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    r = ovprof(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "reports").exists()


def test_cli_store_without_run_records_is_bad_input(tmp_path):
    store = tmp_path / "mb.jsonl"
    store.write_text("".join(line + "\n" for line in FIXTURE.read_text().splitlines() if '"max_batch"' in line
                             and '"kind":"max_batch"' in line))
    r = ovprof("report", str(store), cwd=tmp_path)
    assert r.returncode == 2 and "no run records" in r.stderr


def test_report_help_is_fast_and_light():
    code = ("import sys, time; t = time.perf_counter(); from ovprof.cli import app; import typer.testing as tt; "
            "r = tt.CliRunner().invoke(app, ['report', '--help']); assert r.exit_code == 0, r.output; "
            "assert '--sweep' in r.output and '--format' in r.output, r.output; "
            "print([m for m in ('torch', 'deepspeed', 'pandas', 'matplotlib') if m in sys.modules]); "
            "print(time.perf_counter() - t)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    heavy, seconds = out.stdout.strip().splitlines()
    assert heavy == "[]", out.stdout + out.stderr
    assert float(seconds) < 2.0 and time.perf_counter() - t0 < 10


def test_cuda_records_get_allocator_columns_and_the_gpu_as_device_limit(tmp_path):
    """The CPU fixture relabelled as GPU runs: CUDA memory sources appear, the GPU's memory is the limit."""
    from ovprof.report.load import load
    from ovprof.report.tables import build

    recs = []
    for r in raw_records():
        if r.get("kind", "run") == "run" and r["config"]["memory_budget_gib"] is None:
            m = dict(r.get("metrics") or {})
            if r["status"] == "ok":
                m.update(peak_allocated_bytes=m["peak_tracked_bytes"] * 2,
                         peak_reserved_bytes=m["peak_tracked_bytes"] * 3,
                         nvml_process_peak_bytes=m["peak_tracked_bytes"] * 4)
            recs.append(dict(r, metrics=m, env=dict(r["env"], gpu_name="NVIDIA H100 80GB HBM3",
                                                    gpu_memory_bytes=80 * GIB, cuda_available=True)))
    store = tmp_path / "gpu.jsonl"
    store.write_text("".join(json.dumps(r) + "\n" for r in recs))
    tables = build(load([store]))
    row = row_of(tables["savings"].frame, batch_per_device=2, zero=0, caption_variant="no masking")
    assert row["reserved_saving_x"] == pytest.approx(row["tracked_saving_x"])
    assert row["openvision_peak_nvml_process_gib"] == pytest.approx(4 * row["openvision_peak_tracked_gib"])
    assert row["hardware"] == "NVIDIA H100 80GB HBM3"
    batch = tables["batch"].frame
    assert (batch["device_limit_gib"] == 80.0).all() and "peak_reserved_gib" in batch


def test_fused_ce_caption_runs_get_their_own_savings_row(tmp_path):
    import json as _json

    from ovprof.report.load import load as _load
    from ovprof.report.tables import build as _build

    recs = [_json.loads(line) for line in (Path(__file__).parent / "fixtures" / "records.jsonl").read_text().splitlines()
            if line.strip()]
    eager = next(r for r in recs if r.get("kind", "run") == "run" and r["status"] == "ok"
                 and r["config"]["objective"] == "caption" and not r["config"]["mask_ratio"])
    fused = _json.loads(_json.dumps(eager))
    fused["config"]["loss_impl"] = "chunked"
    fused["run_id"] = "fusedce000000001"
    fused["metrics"]["peak_tracked_bytes"] = eager["metrics"]["peak_tracked_bytes"] // 2
    store_path = tmp_path / "r.jsonl"
    store_path.write_text("".join(_json.dumps(r) + "\n" for r in recs + [fused]))
    sav = _build(_load([str(store_path)]))["savings"].frame
    row = sav[sav["caption_run_id"] == "fusedce000000001"]
    assert len(row) == 1 and row.iloc[0]["caption_variant"].endswith("+ fused CE (chunked)")
    plain = sav[sav["caption_run_id"] == eager["run_id"]].iloc[0]
    assert row.iloc[0]["openvision_run_id"] == plain["openvision_run_id"]  # the same OpenVision run
    assert row.iloc[0]["tracked_saving_x"] == pytest.approx(2 * plain["tracked_saving_x"], rel=1e-3)


def test_loss_impl_table_puts_each_fused_run_beside_its_eager_run(tmp_path):
    """Per setting: eager, chunked, triton rows with the % change of the tracked peak against eager's record;
    a failed fused run is text, and a setting measured with one loss_impl only gets no rows."""
    recs = raw_records()
    eager = next(r for r in recs if r.get("kind", "run") == "run" and r["status"] == "ok"
                 and r["config"]["objective"] == "caption" and not r["config"]["mask_ratio"])
    chunked = json.loads(json.dumps(eager))
    chunked["config"]["loss_impl"] = "chunked"
    chunked["run_id"] = "fusedce000000001"
    chunked["metrics"]["peak_tracked_bytes"] = int(eager["metrics"]["peak_tracked_bytes"] * 0.75)
    triton = json.loads(json.dumps(eager))
    triton["config"]["loss_impl"] = "triton"
    triton["run_id"] = "fusedce000000002"
    triton["status"] = "error"
    store = tmp_path / "r.jsonl"
    store.write_text("".join(json.dumps(r) + "\n" for r in recs + [chunked, triton]))
    from ovprof.report.render import write_report

    rep = write_report([str(store)], tmp_path / "out", formats={"md", "csv"})
    f = rep.tables["loss_impl"].frame
    assert list(f["loss_impl"]) == ["eager", "chunked", "triton"]
    assert set(f["run_id"]) == {eager["run_id"], "fusedce000000001", "fusedce000000002"}
    assert row_of(f, loss_impl="eager")["change_tracked_pct"] == pytest.approx(0.0)
    assert row_of(f, loss_impl="chunked")["change_tracked_pct"] == pytest.approx(-25.0, abs=1e-6)
    assert row_of(f, loss_impl="chunked")["peak_tracked_gib"] == pytest.approx(
        chunked["metrics"]["peak_tracked_bytes"] / GIB)
    assert row_of(f, loss_impl="triton")["change_tracked_pct"] == "triton error"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Caption head + cross-entropy: eager vs fused (loss_impl)" in md and "| -25.0 |" in md
    assert (tmp_path / "out" / "loss_impl.csv").exists()


def test_loss_impl_table_is_empty_without_a_fused_run(report):
    t = report.tables["loss_impl"]
    assert t.frame.empty and "more than one loss_impl" in t.empty_reason


def test_levers_table_puts_each_value_beside_the_default_at_the_same_setting(tmp_path):
    """optimizer_impl and grad_accum away from their defaults: % change of step time, time per sample and tracked
    peak against the default's record; a lever measured at one value only gets no rows."""
    recs = raw_records()
    base = next(r for r in recs if r.get("kind", "run") == "run" and r["status"] == "ok"
                and r["config"]["objective"] == "caption" and not r["config"]["mask_ratio"])
    base = json.loads(json.dumps(base))
    base["metrics"]["time_per_sample_ms"] = base["metrics"]["step_time_ms_median"] / base["config"]["batch"]
    foreach = json.loads(json.dumps(base))
    foreach["config"]["optimizer_impl"] = "foreach"
    foreach["run_id"] = "levers0000000001"
    foreach["metrics"]["peak_tracked_bytes"] = int(base["metrics"]["peak_tracked_bytes"] * 1.1)
    accum = json.loads(json.dumps(base))
    accum["config"]["grad_accum"] = 4
    accum["run_id"] = "levers0000000002"
    accum["metrics"]["step_time_ms_median"] = base["metrics"]["step_time_ms_median"] * 2
    accum["metrics"]["time_per_sample_ms"] = base["metrics"]["time_per_sample_ms"] / 2
    store = tmp_path / "r.jsonl"
    store.write_text("".join(json.dumps(r) + "\n" for r in recs + [foreach, accum]))
    from ovprof.report.render import write_report

    f = write_report([str(store)], tmp_path / "out", formats={"md", "csv"}).tables["levers"].frame
    assert set(f["lever"]) == {"optimizer_impl", "grad_accum"}
    opt = f[f["lever"] == "optimizer_impl"]
    assert list(opt["value"]) == ["forloop", "foreach"]
    assert row_of(opt, value="foreach")["change_tracked_pct"] == pytest.approx(10.0, abs=1e-3)
    acc = f[f["lever"] == "grad_accum"]
    assert list(acc["value"]) == ["1", "4"]
    assert row_of(acc, value="4")["change_step_pct"] == pytest.approx(100.0)
    assert row_of(acc, value="4")["change_sample_pct"] == pytest.approx(-50.0)
    assert (tmp_path / "out" / "levers.csv").exists()


# -- what a reader sees: cells, wide tables, plots --------------------------------------------------------------

SCIENTIFIC = r"(?<![0-9A-Za-z])[-+]?\d(\.\d+)?[eE][+-]?\d+(?![0-9A-Za-z])"  # 3.725e-09, 5e+08; not a run_id


def _digits(text: str) -> int:
    """Significant digits of a fixed-notation number as shown ('0.003725' -> 4, '85490' -> 4, '123500' -> 4)."""
    d = text.lstrip("+-").replace(".", "").lstrip("0")
    return len(d.rstrip("0")) if "." not in text else len(d)


def test_cells_are_fixed_notation_with_3_to_4_significant_digits_over_any_magnitude():
    import re

    from ovprof.report.cells import fmt

    kinds = ("ms", "num", "spread", "gib", "int", "gflops", "x", "pct")
    seen = 0
    for exp in range(-15, 16):
        for mantissa in (1.0, 1.2345678, 3.725, 9.99996, 5.0):
            for sign in (1, -1):
                v = sign * mantissa * 10.0 ** exp
                for kind in kinds:
                    text = fmt(v, kind)
                    assert not re.search(SCIENTIFIC, text) and "inf" not in text and "nan" not in text, (v, kind, text)
                    seen += 1
                for kind in ("ms", "num"):
                    text = fmt(v, kind)
                    assert float(text) == pytest.approx(v, rel=5e-4), (v, text)
                    assert 1 <= _digits(text) <= 4, (v, text)
                assert fmt(v, "x").endswith("x")
    assert seen > 2000
    for kind in kinds:
        assert fmt(None, kind) == fmt(float("nan"), kind) == fmt(float("inf"), kind) == "n/a"
        assert fmt("oom", kind) == "oom"  # a reason stays as it is, never a number
    assert fmt(0, "ms") == "0" and fmt(0.0, "gib") == "0" and fmt(1.78, "x") == "1.78x"
    assert fmt(3.725e-09, "ms") == "0.000000003725" and fmt(85490.2, "ms") == "85490"
    assert fmt(271.75, "gflops") == "271.75"  # the paper's FLOPs as printed


def test_byte_columns_pick_their_unit_and_tiny_cells_name_their_own():
    from ovprof.report.cells import Column, column_unit, fmt, shown

    gib = lambda nbytes: nbytes / GIB  # noqa: E731
    col = Column("temporaries_gib", "temporaries GiB", "gib")
    frame = pd.DataFrame({"temporaries_gib": [gib(4), gib(1.5 * 2**20), gib(700 * 2**20), "oom"]})
    header, cell = shown(frame, col)
    assert header == "temporaries MiB"
    assert [cell(r) for _, r in frame.iterrows()] == ["4 B", "1.5", "700", "oom"]  # 3.725e-09 GiB was "4 B"
    for values, unit in (([gib(512), gib(3)], "B"), ([gib(2048)], "KiB"), ([gib(5 * 2**20)], "MiB"),
                         ([3.0, 0.01], "GiB"), ([1500.0], "GiB")):
        assert column_unit(values, "gib")[0] == unit, values
    assert column_unit(["oom", "not measured: x"], "gib") is None
    assert shown(pd.DataFrame({"a_gib": ["oom"]}), Column("a_gib", "a GiB", "gib"))[0] == "a GiB"
    # every byte figure round-trips through its column's unit within 4 significant digits
    for exp in range(0, 45):
        nbytes = 1.2345 * 2.0 ** exp
        unit = column_unit([gib(nbytes)], "gib")
        number, _, own = fmt(gib(nbytes), "gib", unit).partition(" ")
        size = dict((("B", 1), ("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30)))[own or unit[0]]
        assert float(number) * size == pytest.approx(nbytes, rel=5e-4), exp


def test_report_tables_never_show_scientific_notation(report):
    import re

    md = (report.out / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert rows and not [r for r in rows if re.search(SCIENTIFIC, r)]
    html_text = (report.out / "report.html").read_text()
    cells = re.findall(r"<td[^>]*>(.*?)</td>", html_text)
    assert cells and not [c for c in cells if re.search(SCIENTIFIC, c)]
    zero = [line for line in md.split("## ZeRO stage")[1].splitlines() if line.startswith("| encoder")]
    assert zero and "MiB" in zero[0] and "GiB" not in zero[0].split("peak RSS")[0]  # debug runs: a few MiB
    assert re.search(r"\| \d+(\.\d+)?x \|", md)  # ratios read 1.78x


def test_split_wide_keeps_every_column_once_and_repeats_the_key():
    from ovprof.report.render import BODY_PX, Shown, column_px, split_wide

    names = ["encoder_res", "batch_per_device", "precision", "caption_variant"]
    names += [f"{side}_peak_{src}_gib" for src in ("tracked", "rss", "reserved", "allocated") for side in
              ("openvision", "caption", "clip", "saving")]
    names += [f"extra_{i}" for i in range(12)]
    kinds = ["text", "int", "text", "text"] + ["x" if n.startswith("saving") else "gib" for n in names[4:]]
    headers = [n.replace("_", " ") + " with a long header" for n in names]
    rows = [[f"{n[:3]}{i}" * 3 for n in names] for i in range(3)]
    table = Shown(names, headers, kinds, rows, [[1.0] * len(names) for _ in rows])
    parts = split_wide(table)
    assert len(parts) > 1 and all(p.part == (i + 1, len(parts)) for i, p in enumerate(parts))
    for p in parts:
        assert p.names[:4] == names[:4] and p.key == 4
        assert sum(column_px(h, [r[i] for r in p.rows], [r[i] for r in p.raws])
                   for i, h in enumerate(p.headers)) <= BODY_PX
    rest = [n for p in parts for n in p.names[4:]]
    assert rest == names[4:]  # every other column exactly once, in order
    for p in parts:  # a part that holds a ratio holds its group whole (the three sides before it)
        for i, n in enumerate(p.names):
            if n.startswith("saving") and i >= 7:
                assert [m.split("_")[0] for m in p.names[i - 3:i]] == ["openvision", "caption", "clip"]
    assert split_wide(Shown(names[:3], headers[:3], kinds[:3], [r[:3] for r in rows],
                            [[1.0] * 3 for _ in rows])) == [Shown(names[:3], headers[:3], kinds[:3],
                                                                  [r[:3] for r in rows], [[1.0] * 3 for _ in rows])]


def test_wide_tables_are_split_in_markdown_and_html(report, monkeypatch):
    from ovprof.report import render

    monkeypatch.setattr(render, "BODY_PX", 700)  # a narrow page: the savings views no longer fit
    rep = report
    md, html_text = render.render_md(rep), render.render_html(rep)
    assert "Part 1 of" in md and html_text.count('class="part"') == md.count("*Part ") > 0
    assert "max-width: 700px" in html_text
    sav = rep.tables["savings"]
    whole = render.shown_table(sav, render.savings_view(sav, ("step_ms", "speedup_x")))
    step = md.split("### Step time")[1].split("###")[0]
    shown = [[h.strip() for h in line.strip().strip("|").split(" | ")] for line in step.splitlines()
             if line.startswith("| encoder")]
    assert len(shown) > 1
    key = [h for h in shown[0] if all(h in part for part in shown)]
    assert key and all(part[:len(key)] == key for part in shown)
    assert [h for part in shown for h in part[len(key):]] == whole.headers[len(key):]  # each column once, in order


def test_max_batch_sections_say_the_paper_figure_is_a_grid(report):
    from ovprof.report import paper

    note = paper.max_batch_note()
    for word in ("2k/4k/8k", "512/1k", "32 GiB", "grid", "search", "per device"):
        assert word in note, word
    md = (report.out / "report.md").read_text()
    assert note in md.split("### Max batch per device")[1].split("###")[0]
    assert any(note == n for n in report.tables["paper_reference"].notes)


def test_savings_plot_has_a_bar_per_measured_ratio_and_the_papers_lines(report):
    from matplotlib.patches import Rectangle

    from ovprof.report import paper
    from ovprof.report.plots import savings_ratio_figure

    f = report.tables["savings"].frame
    fig, top = savings_ratio_figure(f)
    assert 0.5 < top < 1
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["time", "memory", "max batch", "FLOPs"]  # the fixture searched
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    for p in paper.SETTINGS:
        assert f"paper (TPU v4, JAX): {p.label}" in legend
    columns = {"time": "speedup_x", "memory": "tracked_saving_x", "max batch": "max_batch_x", "FLOPs": "flops_x"}
    keys = {"time": "time_x", "memory": "memory_x", "max batch": "max_batch_x", "FLOPs": "flops_x"}
    for ax in axes:
        name = ax.get_title()
        bars = [b.get_width() for b in ax.patches if isinstance(b, Rectangle)]
        measured = [v for v in f[columns[name]] if is_number(v)]
        assert bars == pytest.approx(measured), name  # a bar per measured ratio, and no other
        missing = [t.get_text() for t in ax.texts if t.get_text().startswith("n/a: ")]
        assert len(missing) == len(f) - len(measured), name  # a ratio with no number is text, never a 0 bar
        lines = {round(ln.get_xdata()[0], 6) for ln in ax.lines if ln.get_label().startswith(paper.LABEL)}
        assert lines == {round(paper.HEADLINE[p.encoder][keys[name]], 6) for p in paper.SETTINGS}, name
    assert "2k/4k/8k" in axes[2].get_xlabel() and "32 GiB" in axes[2].get_xlabel()
    import matplotlib.pyplot as plt

    plt.close(fig)
    at_paper = f.assign(paper_setting=["ViT-L/14@224"] + list(f["paper_setting"][1:]))
    fig, _ = savings_ratio_figure(at_paper)  # a row at the paper's own setting says which line is its own
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks[0].endswith("= the paper's ViT-L/14@224") and not any("the paper's" in t for t in ticks[1:])
    plt.close(fig)
    plot = next(p for p in report.plots if p.file == "savings.png")
    assert "paper (TPU v4, JAX)" in plot.caption and "n/a" in plot.caption
    assert "![Savings ratios beside the paper's](savings.png)" in (report.out / "report.md").read_text()


def test_every_plot_carries_the_hardware_precision_and_versions(report, tmp_path, monkeypatch):
    from ovprof.report import plots

    data = report.data
    foot = plots.footer(data.runs)
    for word in ("AMD EPYC (CPU), 2 cores", "ranks 1", "precision fp32", "torch 2.13.0+cpu", "DeepSpeed 0.19.8"):
        assert word in foot, word
    gpu = data.runs.assign(hardware="NVIDIA H100 80GB HBM3", gpu_count=8, world_size=[1, 2] * (len(data.runs) // 2)
                           + [1] * (len(data.runs) % 2), precision="bf16")
    assert plots.footer(gpu).startswith("Measured on 8 x NVIDIA H100 80GB HBM3 | ranks 1, 2 | precision bf16")
    bare = data.runs.assign(hardware="unknown hardware", torch=None, deepspeed=None)  # records without an env
    assert plots.footer(bare).startswith("Measured on unknown hardware |")
    assert "torch ?, DeepSpeed ?" in plots.footer(bare)
    drawn = []
    monkeypatch.setattr(plots, "_done", lambda fig: drawn.append(fig))
    monkeypatch.setattr(plots, "DPI", 10)  # the figures are what is checked, not the pixels
    made = plots.draw_all(data, report.tables, tmp_path)
    assert len(drawn) == len(made) >= 6
    for fig, plot in zip(drawn, made):
        texts = [t.get_text().replace("\n", " ") for t in fig.texts]
        assert foot in texts, plot.file
        assert plot.footer == foot
