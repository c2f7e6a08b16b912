"""`ovprof check`: the memory gate's verdicts, exit codes, baseline file and JUnit report.

Most tests write realistic synthetic records with store.append and run the real
CLI entry point in-process; bad-input tests and the planted regression go
through a subprocess, as CI would.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import pytest

from ovprof.check.compare import parse_tolerance
from ovprof.check.baseline import SCHEMA_VERSION as BASELINE_SCHEMA_VERSION
from ovprof.config import ExecOptions, RunConfig
from ovprof.results.record import SCHEMA_VERSION
from ovprof.errors import UsageError
from ovprof.results import store

from conftest import ROOT, ovprof

# The point the synthetic records describe; tests vary batch/zero to make several points.
BASE = dict(encoder="vit-debug", vocab_size=512, caption_len=16, batch=2, steps=1, warmup=1, precision="fp32",
            zero=0)
CPU_ENV = {"ovprof_version": "0.1.0", "torch": "2.13.0+cpu", "deepspeed": "0.19.8", "cuda": None,
           "cuda_available": False, "gpu_name": None, "cpu_model": "AMD EPYC", "git_sha": "a" * 40,
           "git_dirty": False, "python": "3.11.7", "hostname": "ci"}
CUDA_ENV = {**CPU_ENV, "torch": "2.13.0+cu128", "cuda": "12.8", "cuda_available": True,
            "gpu_name": "NVIDIA H100 80GB HBM3"}


def cfg(**kw) -> RunConfig:
    return RunConfig(**{**BASE, **kw})


def record(status="ok", peak=1_000_000, alloc=None, rss=300_000_000, step=100.0, env=CPU_ENV,
           finished_at="2026-01-01T00:00:00.000+00:00", **kw) -> dict:
    """A run record shaped like runner.launch.run_point's."""
    c = cfg(**kw)
    breakdown = {"params": peak // 4, "other": peak - peak // 4} if peak is not None else None
    metrics = {"peak_tracked_bytes": peak, "tracked_breakdown_bytes": breakdown,
               "peak_allocated_bytes": alloc, "peak_reserved_bytes": alloc, "peak_rss_bytes": rss,
               "step_time_ms_median": step, "step_times_ms": [step]}
    reasons = {} if alloc is not None else {"peak_allocated_bytes": "no CUDA device"}
    error = None
    if status != "ok":
        metrics = {"peak_tracked_bytes": peak} if status == "oom" else {}
        error = {"type": {"oom": "BudgetExceeded", "error": "RuntimeError", "timeout": "Timeout"}[status],
                 "message": f"it went {status}\nsecond line", "stderr_tail": "..."}
    return {"schema_version": SCHEMA_VERSION, "kind": "run", "run_id": c.run_id,
            "config": c.resolved().to_dict(), "ds_config": {"zero_optimization": {"stage": c.zero}},
            "started_at": finished_at, "finished_at": finished_at, "status": status, "error": error,
            "metrics": metrics, "null_reasons": reasons, "env": dict(env)}


def write(path, *records) -> str:
    for r in records:
        store.append(path, r)
    return str(path)


@pytest.fixture
def check(cli_in_process):
    """Run `ovprof check ARGS` through the real entry point in-process; (exit code, stdout, stderr)."""
    return lambda *args: cli_in_process("check", *args)


@pytest.fixture
def baseline_of(check, tmp_path):
    """Write a baseline from these records (via --update-baseline); returns its path."""
    n = [0]

    def make(*records, args=()):
        n[0] += 1
        src = write(tmp_path / f"baseline-src-{n[0]}.jsonl", *records)
        path = str(tmp_path / f"baseline-{n[0]}.json")
        code, out, err = check("--update-baseline", "--baseline", path, "--results", src, *args)
        assert code == 0, out + err
        return path

    return make


def verdicts(out: str) -> dict[str, list[str]]:
    """label -> row verdicts, from --json output."""
    data = json.loads(out)
    return {p["label"]: [r["verdict"] for r in p["rows"]] for p in data["points"]}


# -- tolerance ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, pct", [("5%", 5), ("5", 5), (" 2.5 % ", Fraction(5, 2)), ("0.05", Fraction(1, 20)),
                                       ("0", 0), ("30%", 30)])
def test_tolerance_is_a_percentage_with_or_without_the_sign(text, pct):
    assert parse_tolerance(text) == pct


@pytest.mark.parametrize("text", ["abc", "-1", "5%%", "", "nan", "1e3", "5 percent"])
def test_bad_tolerance_is_a_usage_error(text):
    with pytest.raises(UsageError, match="--tolerance"):
        parse_tolerance(text)


# -- verdicts ---------------------------------------------------------------------------------------------------


def test_noise_within_tolerance_passes(check, baseline_of, tmp_path):
    base = baseline_of(record(peak=1_000_000))
    res = write(tmp_path / "r.jsonl", record(peak=1_010_000))  # +1 %
    code, out, _ = check("--baseline", base, "--results", res, "--tolerance", "5%")
    assert code == 0, out
    assert "REGRESSION" not in out and out.strip().splitlines()[-1].startswith("PASS: 1 point")
    code, out, _ = check("--baseline", base, "--results", res, "--tolerance", "0.5")  # 0.5 %: now too much
    assert code == 1, out


@pytest.mark.parametrize("current, code", [(1_050_000, 0), (1_050_001, 1), (950_000, 0)])
def test_exactly_at_tolerance_passes_and_one_byte_over_fails(check, baseline_of, tmp_path, current, code):
    base = baseline_of(record(peak=1_000_000))
    res = write(tmp_path / "r.jsonl", record(peak=current))
    got, out, err = check("--baseline", base, "--results", res, "--tolerance", "5%")
    assert got == code, out + err
    rid = cfg().run_id
    if code:
        assert (f"REGRESSION caption vit-debug (run_id {rid}): peak_tracked_bytes 1000000 -> 1050001 "
                "(+5.00%, tolerance 5%)") in out.splitlines()
    else:
        assert "REGRESSION" not in out and "IMPROVED" not in out


def test_improvement_is_flagged_but_passes(check, baseline_of, tmp_path):
    base = baseline_of(record(peak=1_000_000))
    res = write(tmp_path / "r.jsonl", record(peak=800_000))
    code, out, _ = check("--baseline", base, "--results", res, "--json")
    assert code == 0
    assert verdicts(out) == {"caption vit-debug": ["improved"]}
    assert json.loads(out)["points"][0]["rows"][0]["delta_pct"] == -20.0
    code, out, _ = check("--baseline", base, "--results", res)
    assert code == 0
    assert any(line.startswith("IMPROVED caption vit-debug") and "-20.00%" in line for line in out.splitlines())
    assert "--update-baseline" in out


def test_missing_point_fails_unless_allowed(check, baseline_of, tmp_path):
    base = baseline_of(record(batch=2), record(batch=4))
    res = write(tmp_path / "r.jsonl", record(batch=2))
    code, out, _ = check("--baseline", base, "--results", res)
    assert code == 1
    assert any(line.startswith("MISSING caption vit-debug batch=4 (run_id") for line in out.splitlines())
    assert "FAIL" in out.splitlines()[-1]
    code, out, _ = check("--baseline", base, "--results", res, "--allow-missing")
    assert code == 0, out
    assert "allowed by --allow-missing" in out
    # ... but results holding none of the baseline's points (a sweep that ran nothing) never pass
    other = write(tmp_path / "other.jsonl", record(batch=8))
    code, out, _ = check("--baseline", base, "--results", other, "--allow-missing")
    assert code == 1 and "excuses some points, not all" in out


def test_new_point_is_reported_and_passes(check, baseline_of, tmp_path):
    base = baseline_of(record(batch=2))
    res = write(tmp_path / "r.jsonl", record(batch=2), record(batch=4, peak=2_000_000))
    code, out, _ = check("--baseline", base, "--results", res, "--json")
    assert code == 0
    assert verdicts(out) == {"caption vit-debug batch=2": ["ok"], "caption vit-debug batch=4": ["new"]}
    code, out, _ = check("--baseline", base, "--results", res)
    assert any(line.startswith("NEW caption vit-debug batch=4") for line in out.splitlines())


@pytest.mark.parametrize("before, after, code, verdict", [
    ("ok", "oom", 1, "status-changed"),
    ("ok", "error", 1, "status-changed"),
    ("ok", "timeout", 1, "status-changed"),
    ("oom", "ok", 0, "improved"),
    ("oom", "oom", 0, "ok"),
])
def test_status_changes(check, baseline_of, tmp_path, before, after, code, verdict):
    base = baseline_of(record(status=before))
    res = write(tmp_path / "r.jsonl", record(status=after))
    got, out, _ = check("--baseline", base, "--results", res, "--json")
    assert got == code
    assert verdicts(out) == {"caption vit-debug": [verdict]}
    if code:
        _, out, _ = check("--baseline", base, "--results", res)
        assert f"STATUS-CHANGED caption vit-debug (run_id {cfg().run_id}): status {before} -> {after}" in out


def test_latest_ok_record_of_a_point_is_the_one_compared(check, baseline_of, tmp_path):
    base = baseline_of(record(peak=1_000_000))
    # file order decides: a rerun that fixed the regression passes ...
    res = write(tmp_path / "a.jsonl", record(peak=2_000_000), record(peak=1_000_000))
    assert check("--baseline", base, "--results", res)[0] == 0
    # ... and the other way round fails; later stores win over earlier ones
    res2 = write(tmp_path / "b.jsonl", record(peak=2_000_000))
    assert check("--baseline", base, "--results", res, "--results", res2)[0] == 1
    assert check("--baseline", base, "--results", res2, "--results", res)[0] == 0
    # an error after an ok record does not hide the ok one; an error alone is a status change
    res3 = write(tmp_path / "c.jsonl", record(peak=1_000_000), record(status="error"))
    assert check("--baseline", base, "--results", res3)[0] == 0
    # other record kinds (a max_batch summary) are not run records of the point
    res3b = write(tmp_path / "c2.jsonl", record(peak=1_000_000), {**record(peak=9_000_000), "kind": "max_batch"})
    assert check("--baseline", base, "--results", res3b)[0] == 0
    res4 = write(tmp_path / "d.jsonl", record(status="error"))
    code, out, _ = check("--baseline", base, "--results", res4)
    assert code == 1 and "STATUS-CHANGED" in out and "RuntimeError: it went error" in out


# -- metrics ----------------------------------------------------------------------------------------------------


def test_cuda_records_gate_the_allocator_peak_and_cpu_records_the_tracked_peak(check, baseline_of, tmp_path):
    base = baseline_of(record(env=CUDA_ENV, alloc=10_000_000, peak=1_000_000))
    data = json.loads(open(base).read())
    assert data["gated_metrics"] == ["peak_allocated_bytes"]
    # the tracked peak is unchanged, the allocator's grew 20 %: a regression on CUDA
    res = write(tmp_path / "r.jsonl", record(env=CUDA_ENV, alloc=12_000_000, peak=1_000_000))
    code, out, _ = check("--baseline", base, "--results", res)
    assert code == 1 and "peak_allocated_bytes 10000000 -> 12000000 (+20.00%" in out
    # on CPU the allocator figure is null and the tracked peak is what counts
    cpu_base = baseline_of(record(peak=1_000_000))
    res = write(tmp_path / "cpu.jsonl", record(peak=1_200_000))
    code, out, _ = check("--baseline", cpu_base, "--results", res)
    assert code == 1 and "peak_tracked_bytes 1000000 -> 1200000" in out


def test_cpu_baseline_against_cuda_results_is_bad_input(check, baseline_of, tmp_path):
    base = baseline_of(record(peak=1_000_000))
    res = write(tmp_path / "r.jsonl", record(env=CUDA_ENV, alloc=10_000_000, peak=1_000_000))
    code, _, err = check("--baseline", base, "--results", res)
    assert code == 2 and "no peak_allocated_bytes" in err and "CUDA" in err


def test_metric_option_overrides_the_default_and_repeats(check, baseline_of, tmp_path):
    args = ("--metric", "peak_rss_bytes", "--metric", "peak_tracked_bytes")
    base = baseline_of(record(peak=1_000_000, rss=300_000_000), args=args)
    stored = json.loads(open(base).read())["points"][0]["metrics"]
    assert stored == {"peak_rss_bytes": 300_000_000, "peak_tracked_bytes": 1_000_000, "step_time_ms_median": 100.0}
    res = write(tmp_path / "r.jsonl", record(peak=1_000_000, rss=400_000_000))
    code, out, _ = check("--baseline", base, "--results", res, *args, "--json")
    assert code == 1
    assert verdicts(out) == {"caption vit-debug": ["regression", "ok"]}
    # without --metric the CPU default (tracked peak) alone is gated
    assert check("--baseline", base, "--results", res)[0] == 0


def test_step_time_is_gated_only_with_time_tolerance(check, baseline_of, tmp_path):
    base = baseline_of(record(step=100.0))
    res = write(tmp_path / "r.jsonl", record(step=150.0))
    assert check("--baseline", base, "--results", res)[0] == 0
    code, out, _ = check("--baseline", base, "--results", res, "--time-tolerance", "30%")
    assert code == 1 and "step_time_ms_median 100.00 -> 150.00 (+50.00%, tolerance 30%)" in out
    assert check("--baseline", base, "--results", res, "--time-tolerance", "60")[0] == 0


def test_an_ok_record_without_the_gated_metric_fails_even_with_allow_missing(check, baseline_of, tmp_path):
    base = baseline_of(record(peak=1_000_000))
    bad = record(peak=None)
    bad["null_reasons"]["peak_tracked_bytes"] = "tracker disabled"
    res = write(tmp_path / "r.jsonl", bad)
    code, out, _ = check("--baseline", base, "--results", res, "--allow-missing")
    assert code == 1
    assert (f"MISSING caption vit-debug (run_id {cfg().run_id}): peak_tracked_bytes 1000000 -> -; the current "
            "record has no peak_tracked_bytes (tracker disabled)") in out.splitlines()


# -- matching ---------------------------------------------------------------------------------------------------


def test_points_match_by_config_when_the_run_id_differs(check, tmp_path):
    """A baseline from an older ovprof: another run_id scheme, one config field not yet there, older torch."""
    old = record(peak=1_000_000, env={**CPU_ENV, "torch": "2.12.0+cpu"})
    del old["config"]["loss_impl"]  # today's default ("eager") fills it in
    old["run_id"] = "0123456789abcdef"
    src = write(tmp_path / "old.jsonl", old)
    base = str(tmp_path / "base.json")
    assert check("--update-baseline", "--baseline", base, "--results", src)[0] == 0
    res = write(tmp_path / "r.jsonl", record(peak=1_000_000))
    code, out, _ = check("--baseline", base, "--results", res)
    assert code == 0, out
    assert "torch differs: baseline 2.12.0+cpu, results 2.13.0+cpu" in out
    assert f"0123456789abcdef -> {cfg().run_id}" in out
    res = write(tmp_path / "r2.jsonl", record(peak=1_100_000))
    assert check("--baseline", base, "--results", res)[0] == 1


def test_ignore_field_compares_across_a_deliberate_config_change(check, baseline_of, tmp_path):
    base = baseline_of(record(decoder="dec-debug", peak=1_000_000))
    res = write(tmp_path / "r.jsonl", record(decoder="dec-debug-wide", peak=1_500_000))
    code, out, _ = check("--baseline", base, "--results", res, "--json")
    assert code == 1 and verdicts(out) == {"caption vit-debug decoder=dec-debug": ["missing"],
                                           "caption vit-debug decoder=dec-debug-wide": ["new"]}
    code, out, _ = check("--baseline", base, "--results", res, "--ignore-field", "decoder", "--json")
    assert code == 1 and verdicts(out) == {"caption vit-debug": ["regression"]}
    # the ignored field is not part of a point's name, even where the points differ in it
    res = write(tmp_path / "r2.jsonl", record(decoder="dec-debug-wide", peak=1_000_000),
                record(decoder="dec-debug-wide", batch=4))
    code, out, _ = check("--baseline", base, "--results", res, "--ignore-field", "decoder", "--json")
    assert code == 0 and verdicts(out) == {"caption vit-debug batch=2": ["ok"], "caption vit-debug batch=4": ["new"]}


def test_ignore_field_that_merges_baseline_points_is_bad_input(check, baseline_of, tmp_path):
    base = baseline_of(record(batch=2), record(batch=4))
    res = write(tmp_path / "r.jsonl", record(batch=2))
    code, _, err = check("--baseline", base, "--results", res, "--ignore-field", "batch")
    assert code == 2 and "same point" in err


# -- reports ----------------------------------------------------------------------------------------------------


def test_junit_has_one_testcase_per_point_and_a_failure_per_failing_point(check, baseline_of, tmp_path):
    base = baseline_of(record(zero=0), record(zero=1), record(zero=2))
    res = write(tmp_path / "r.jsonl", record(zero=0), record(zero=1, peak=1_200_000), record(zero=3))
    xml_path = tmp_path / "out" / "check.xml"
    code, out, _ = check("--baseline", base, "--results", res, "--junit", str(xml_path))
    assert code == 1
    root = ET.parse(xml_path).getroot()
    cases = {tc.get("name").split(" (")[0]: tc for tc in root.iter("testcase")}
    assert sorted(cases) == ["caption vit-debug zero=0", "caption vit-debug zero=1", "caption vit-debug zero=2",
                             "caption vit-debug zero=3"]
    assert cases["caption vit-debug zero=0"].find("failure") is None
    assert cases["caption vit-debug zero=1"].find("failure").get("type") == "regression"
    assert "+20.00%" in cases["caption vit-debug zero=1"].find("failure").get("message")
    assert cases["caption vit-debug zero=2"].find("failure").get("type") == "missing"
    assert cases["caption vit-debug zero=3"].find("failure") is None  # new: reported, passes
    assert "NEW" in cases["caption vit-debug zero=3"].find("system-out").text
    assert root.get("tests") == "4" and root.get("failures") == "2"
    check("--baseline", base, "--results", res, "--junit", str(xml_path), "--allow-missing")
    root = ET.parse(xml_path).getroot()
    assert root.get("failures") == "1" and root.get("skipped") == "1"
    skipped = [tc.get("name") for tc in root.iter("testcase") if tc.find("skipped") is not None]
    assert len(skipped) == 1 and skipped[0].startswith("caption vit-debug zero=2 (")


def test_update_baseline_is_small_deterministic_and_checks_clean(check, tmp_path):
    recs = [record(zero=z, peak=1_000_000 + z, finished_at=f"2026-01-0{z + 1}T00:00:00.000+00:00") for z in (0, 1, 2)]
    recs.append(record(zero=3, status="oom", finished_at="2026-01-05T00:00:00.000+00:00"))
    a = write(tmp_path / "a.jsonl", *recs)
    b = write(tmp_path / "b.jsonl", *reversed(recs))  # same records, other order
    pa, pb = tmp_path / "A.json", tmp_path / "B.json"
    assert check("--update-baseline", "--baseline", str(pa), "--results", a)[0] == 0
    first = pa.read_bytes()
    assert check("--update-baseline", "--baseline", str(pa), "--results", a)[0] == 0
    assert check("--update-baseline", "--baseline", str(pb), "--results", b)[0] == 0
    assert pa.read_bytes() == first == pb.read_bytes()
    data = json.loads(first)
    assert first.decode() == json.dumps(data, sort_keys=True, indent=2) + "\n"
    assert data["kind"] == "baseline" and data["schema_version"] == BASELINE_SCHEMA_VERSION
    assert data["created_at"] == "2026-01-05T00:00:00.000+00:00"  # the newest record, not the clock
    assert {k: data["env"][k] for k in ("torch", "deepspeed", "ovprof_version", "git_sha", "cpu_model", "gpu_name")} \
        == {k: CPU_ENV[k] for k in ("torch", "deepspeed", "ovprof_version", "git_sha", "cpu_model", "gpu_name")}
    assert [p["config"]["zero"] for p in data["points"]] == [0, 1, 2, 3]
    assert data["points"][1] == {"run_id": cfg(zero=1).run_id, "config": cfg(zero=1).resolved().to_dict(),
                                 "status": "ok",
                                 "metrics": {"peak_tracked_bytes": 1_000_001, "step_time_ms_median": 100.0}}
    assert data["points"][3]["status"] == "oom" and data["points"][3]["metrics"] == {}
    code, out, _ = check("--baseline", str(pa), "--results", a, "--tolerance", "0")
    assert code == 0, out


@pytest.mark.parametrize("records, message", [
    ([record(status="error")], "did not finish ok or oom"),
    ([record(zero=0), record(zero=1, env={**CPU_ENV, "torch": "2.12.0+cpu"})], "disagree on env.torch"),
    ([record(peak=None)], "has no peak_tracked_bytes"),
])
def test_update_baseline_refuses_records_that_cannot_gate(check, tmp_path, records, message):
    src = write(tmp_path / "r.jsonl", *records)
    code, _, err = check("--update-baseline", "--baseline", str(tmp_path / "b.json"), "--results", src)
    assert code == 2 and message in err
    assert not (tmp_path / "b.json").exists()


# -- bad input through the real CLI -------------------------------------------------------------------------------


def _bad_input_cases(tmp_path):
    good = tmp_path / "good.json"
    src = write(tmp_path / "src.jsonl", record())
    subprocess.run([sys.executable, "-m", "ovprof.cli", "check", "--update-baseline", "--baseline", str(good),
                    "--results", src], check=True, capture_output=True, cwd=ROOT)
    (tmp_path / "broken.json").write_text('{"kind": "baseline", "points": [')
    (tmp_path / "other.json").write_text('{"points": []}')
    return {
        "missing baseline": (["--baseline", str(tmp_path / "nope.json"), "--results", src], "no such baseline"),
        "malformed JSON": (["--baseline", str(tmp_path / "broken.json"), "--results", src], "not valid JSON"),
        "not a baseline": (["--baseline", str(tmp_path / "other.json"), "--results", src], "not an ovprof baseline"),
        "bad tolerance": (["--baseline", str(good), "--results", src, "--tolerance", "abc"], "--tolerance 'abc'"),
        "bad time tolerance": (["--baseline", str(good), "--results", src, "--time-tolerance", "-3%"],
                               "--time-tolerance"),
        "unknown metric": (["--baseline", str(good), "--results", src, "--metric", "peak_trackd_bytes"],
                           "did you mean 'peak_tracked_bytes'"),
        "unknown field": (["--baseline", str(good), "--results", src, "--ignore-field", "decodr"],
                          "did you mean 'decoder'"),
        "missing store": (["--baseline", str(good), "--results", str(tmp_path / "nope.jsonl")],
                          "no such results store"),
        "update with ignore": (["--update-baseline", "--baseline", str(tmp_path / "new.json"), "--results", src,
                                "--ignore-field", "decoder"], "takes no --ignore-field"),
    }


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for name, (args, message) in _bad_input_cases(tmp_path).items():
        r = ovprof("check", *args)
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        assert "Traceback" not in r.stdout + r.stderr, name
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (name, r.stderr)


def test_check_command_never_imports_torch(tmp_path):
    src = write(tmp_path / "r.jsonl", record())
    code = (
        "import sys\n"
        "from ovprof.cli import main\n"
        f"sys.argv = ['ovprof', 'check', '--update-baseline', '--baseline', {str(tmp_path / 'b.json')!r}, "
        f"'--results', {src!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"sys.argv = ['ovprof', 'check', '--baseline', {str(tmp_path / 'b.json')!r}, '--results', {src!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print(sorted(m for m in ('torch', 'deepspeed', 'pandas') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


# -- end to end: a real planted regression ------------------------------------------------------------------------


@pytest.mark.slow
def test_wider_decoder_is_caught_as_a_memory_regression(tmp_path):
    """Real DeepSpeed runs on CPU: baseline with dec-debug, 'current' with the wider dec-debug-wide."""
    from ovprof.runner.launch import run_point

    narrow = RunConfig(encoder="vit-debug", decoder="dec-debug", vocab_size=512, caption_len=16, batch=2, steps=1,
                       warmup=1, precision="fp32", zero=0)
    wide = dataclasses.replace(narrow, decoder="dec-debug-wide")
    base_store, cur_store = tmp_path / "base.jsonl", tmp_path / "cur.jsonl"
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(run_point, c, ExecOptions(store=str(s), timeout_s=300))
                for c, s in ((narrow, base_store), (wide, cur_store))]
        recs = [j.result() for j in jobs]
    for r in recs:
        assert r.status == "ok", r.error
    before, after = (r.metrics["peak_tracked_bytes"] for r in recs)

    baseline = tmp_path / "reports" / "baselines" / "cpu-ci-memory.json"
    r = ovprof("check", "--update-baseline", "--baseline", str(baseline), "--results", str(base_store))
    assert r.returncode == 0, r.stdout + r.stderr
    # the baseline's own results pass, to the byte
    r = ovprof("check", "--baseline", str(baseline), "--results", str(base_store), "--tolerance", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    # the wider decoder is a regression, named with its figures
    junit = tmp_path / "check.xml"
    r = ovprof("check", "--baseline", str(baseline), "--results", str(cur_store), "--ignore-field", "decoder",
               "--junit", str(junit))
    assert r.returncode == 1, r.stdout + r.stderr
    delta = (after - before) * 100 / before
    assert delta > 5
    line = (f"REGRESSION caption vit-debug (run_id {narrow.run_id} -> {wide.run_id}): peak_tracked_bytes "
            f"{before} -> {after} (+{delta:.2f}%, tolerance 5%)")
    assert line in r.stdout.splitlines(), r.stdout
    assert ET.parse(junit).getroot().find("testsuite/testcase/failure").get("type") == "regression"
    print(f"planted regression: peak_tracked_bytes {before} -> {after} (+{delta:.2f}%)")
    # without --ignore-field they are different points: the baseline's is missing, the wide one is new
    r = ovprof("check", "--baseline", str(baseline), "--results", str(cur_store))
    assert r.returncode == 1 and "MISSING" in r.stdout and "NEW" in r.stdout
