"""`ovprof export`: records to MLflow runs (checked through MLflow's own API), CSV and Parquet; bad input.

    python -m pytest -q tests/test_export.py

The store is a few lines of the committed fixture (tests/fixtures/records.jsonl): no DeepSpeed run. MLflow
writes to a file store under tmp_path. The MLflow and Parquet tests skip only where the package is missing
(`pip install -e '.[test]'` installs both).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import ROOT

FIXTURE = ROOT / "tests/fixtures/records.jsonl"
ALLOW = "MLFLOW_ALLOW_FILE_STORE"


def _lines() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


@pytest.fixture
def store(tmp_path) -> Path:
    """Six run records (a run_id measured twice, an oom, a timeout) and the two max-batch summaries.
    Latest per run_id: 4 run records + 2 summaries; every record: 7."""
    recs = _lines()
    runs = [r for r in recs if r.get("kind", "run") == "run"]
    twice = next(r["run_id"] for r in runs if sum(x["run_id"] == r["run_id"] for x in runs) == 2)
    pick = [runs[0], *[r for r in runs if r["run_id"] == twice],
            next(r for r in runs if r["status"] == "oom"), next(r for r in runs if r["status"] == "timeout"),
            *[r for r in recs if r.get("kind") == "max_batch"]]
    path = tmp_path / "results" / "mini.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in pick))
    return path


def _chosen(store, every=False):
    from ovprof.export import read

    return read(store, every=every)


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


@contextmanager
def _file_store():
    """MLflow 3 opens its file store only with MLFLOW_ALLOW_FILE_STORE=true: set while a test reads it back."""
    old = os.environ.get(ALLOW)
    os.environ[ALLOW] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ALLOW, None)
        else:
            os.environ[ALLOW] = old


def _runs(uri, experiment="mini", kind=None):
    from mlflow.entities import ViewType

    with _file_store():
        c = _client(uri)
        exp = c.get_experiment_by_name(experiment)
        runs = c.search_runs([exp.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)
    return [r for r in runs if kind is None or r.data.tags.get("ovprof.kind") == kind]


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv(ALLOW, raising=False)  # the export sets it for itself
    return (tmp_path / "mlruns").as_uri()


# -- MLflow -----------------------------------------------------------------------------------------------------


def test_mlflow_one_run_per_record_params_metrics_tags(store, mlflow_uri, cli_in_process, monkeypatch):
    code, out, err = cli_in_process("export", str(store), "--to", "mlflow", "--tracking-uri", mlflow_uri)
    assert code == 0, err
    assert err == ""  # MLflow's file store: no warning, no deprecation notice
    assert ALLOW not in os.environ  # set for the export's duration only
    assert "6 new, 0 already there" in out and "experiment 'mini'" in out

    import mlflow

    monkeypatch.setenv(ALLOW, "true")  # to read the file store back
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    frame = mlflow.search_runs(experiment_names=["mini"])
    chosen = _chosen(store)
    assert len(frame) == len(chosen.items) == 6  # the acceptance: one run per record
    assert sorted(frame["tags.ovprof.record_key"]) == sorted(it.key for it in chosen.items)

    by_key = {r.data.tags["ovprof.record_key"]: r for r in _runs(mlflow_uri)}
    c = _client(mlflow_uri)
    for it in chosen.items:
        rec, run = it.record, by_key[it.key]
        d = run.data
        assert d.params == {**{k: str(v) for k, v in rec.config.items()},
                            **({} if rec.kind == "run" else {f"search.{k}": str(getattr(rec, k))
                                                             for k in ("start", "granularity", "limit")})}
        assert d.tags["ovprof.kind"] == rec.kind and d.tags["ovprof.run_id"] == rec.run_id
        assert d.tags["ovprof.status"] == rec.status and d.tags["ovprof.superseded"] == "false"
        assert run.info.run_name == f"{rec.run_id} ({rec.status})"
        assert run.info.status == {"ok": "FINISHED", "oom": "FAILED", "timeout": "KILLED"}[rec.status]
        for k, v in (rec.env or {}).items():
            if v is not None:
                assert d.tags[f"env.{k}"] == str(v)
        assert d.metrics["derived.fwd_gflops_per_image"] == pytest.approx(rec.derived["fwd_gflops_per_image"])
        record_json = json.loads(Path(c.download_artifacts(run.info.run_id, "record.json")).read_text())
        assert record_json == json.loads(json.dumps(rec.to_json()))
        if rec.kind == "max_batch":
            assert d.metrics["max_batch"] == rec.max_batch
            continue
        assert d.tags["env.torch"] == rec.env["torch"] and d.tags["env.hostname"] == rec.env["hostname"]
        for name, v in rec.metrics.items():
            if v is None:
                assert name not in d.metrics
                if name in rec.null_reasons:
                    assert d.tags[f"null_reason.{name}"] == rec.null_reasons[name]
            elif isinstance(v, (int, float)):
                assert d.metrics[name] == pytest.approx(v, rel=1e-12), name
            elif isinstance(v, dict):
                for part, x in v.items():
                    if x is not None:
                        assert d.metrics[f"{name}.{part}"] == pytest.approx(x, rel=1e-12)
        if rec.metrics.get("step_times_ms"):
            hist = c.get_metric_history(run.info.run_id, "step_times_ms")
            assert [m.value for m in sorted(hist, key=lambda m: m.step)] == rec.metrics["step_times_ms"]
        if rec.status != "ok":
            assert d.tags["ovprof.error_type"] == rec.error["type"]


def test_mlflow_reexport_adds_nothing_and_marks_a_superseded_run(store, mlflow_uri, cli_in_process):
    args = ("export", str(store), "--to", "mlflow", "--tracking-uri", mlflow_uri)
    assert cli_in_process(*args)[0] == 0
    first = {r.data.tags["ovprof.record_key"]: r.info.run_id for r in _runs(mlflow_uri)}
    code, out, _ = cli_in_process(*args)
    assert code == 0 and "0 new, 6 already there" in out
    assert {r.data.tags["ovprof.record_key"]: r.info.run_id for r in _runs(mlflow_uri)} == first

    # the first record measured again: its new record is exported, the earlier run is kept and tagged
    again = dict(_lines()[0], started_at="2026-12-01T10:00:00.000+00:00", finished_at="2026-12-01T10:00:09.000+00:00")
    with store.open("a") as f:
        f.write(json.dumps(again) + "\n")
    code, out, _ = cli_in_process(*args)
    assert code == 0 and "1 new, 5 already there" in out and "1 earlier run(s) now tagged" in out
    runs = _runs(mlflow_uri)
    assert len(runs) == 7
    old = next(r for r in runs if r.info.run_id == first[_chosen(store, every=True).items[0].key])
    assert old.data.tags["ovprof.superseded"] == "true"

    # --all adds the superseded records never exported (the run_id measured twice in the fixture), tagged so
    code, out, _ = cli_in_process(*args, "--all")
    assert code == 0 and "1 new" in out
    runs = _runs(mlflow_uri)
    assert len(runs) == len(_chosen(store, every=True).items) == 8
    assert sum(r.data.tags["ovprof.superseded"] == "true" for r in runs) == 2


def test_mlflow_a_half_written_run_is_written_again(store, mlflow_uri, cli_in_process):
    key = _chosen(store).items[0].key
    with _file_store():
        c = _client(mlflow_uri)
        eid = c.create_experiment("mini")
        stale = c.create_run(eid, tags={"ovprof.record_key": key, "ovprof.kind": "run"}).info.run_id  # RUNNING
    code, out, err = cli_in_process("export", str(store), "--to", "mlflow", "--tracking-uri", mlflow_uri)
    assert code == 0, err
    assert "5 new, 0 already there, 1 left half-written before, written again" in out
    runs = [r for r in _runs(mlflow_uri) if r.data.tags["ovprof.record_key"] == key]
    assert len(runs) == 1 and runs[0].info.run_id != stale and runs[0].info.status == "FINISHED"


def test_mlflow_report_is_one_run_of_its_own(store, mlflow_uri, cli_in_process, tmp_path):
    report = tmp_path / "reports" / "mini"
    report.mkdir(parents=True)
    (report / "report.md").write_text("# mini\n")
    (report / "savings.csv").write_text("a,b\n1,2\n")
    args = ("export", str(store), "--to", "mlflow", "--tracking-uri", mlflow_uri, "--report", str(report))
    for _ in range(2):
        code, out, err = cli_in_process(*args)
        assert code == 0, err
    (rep,) = _runs(mlflow_uri, kind="report")
    assert rep.info.run_name == "report" and rep.info.status == "FINISHED"
    records = _runs(mlflow_uri, kind="run") + _runs(mlflow_uri, kind="max_batch")
    assert len(records) == 6
    with _file_store():
        c = _client(mlflow_uri)
        assert sorted(a.path for a in c.list_artifacts(rep.info.run_id)) == ["report.md", "savings.csv"]
        assert [a.path for a in c.list_artifacts(records[0].info.run_id)] == ["record.json"]


def test_mlflow_default_is_a_quiet_file_store_in_mlruns(store, tmp_path, monkeypatch, cli_in_process):
    pytest.importorskip("mlflow")
    monkeypatch.delenv(ALLOW, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, err = cli_in_process("export", str(store), "--to", "mlflow", "--experiment", "mine")
    assert code == 0 and err == "", err
    assert (work / "mlruns").is_dir() and f"at {(work / 'mlruns').as_uri()}" in out
    assert len(_runs((work / "mlruns").as_uri(), experiment="mine")) == 6


def test_mlflow_refused_file_store_is_one_line(store, mlflow_uri, monkeypatch, cli_in_process):
    monkeypatch.setenv(ALLOW, "false")  # the user's own choice wins over ovprof's default
    code, _, err = cli_in_process("export", str(store), "--to", "mlflow", "--tracking-uri", mlflow_uri)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "MLFLOW_ALLOW_FILE_STORE=false" in err


def test_mlflow_server_unreachable_is_one_line_exit_1(store, monkeypatch, cli_in_process):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    code, _, err = cli_in_process("export", str(store), "--to", "mlflow", "--tracking-uri", "http://127.0.0.1:9")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "MLflow at http://127.0.0.1:9" in err


# -- CSV and Parquet -----------------------------------------------------------------------------------------------


def test_csv_round_trips_through_pandas(store, cli_in_process):
    import pandas as pd

    import ovprof

    code, out, err = cli_in_process("export", str(store), "--to", "csv")
    assert code == 0, err
    path = store.with_suffix(".csv")
    assert f"wrote {path}: 4 run records" in out
    got = pd.read_csv(path)
    want = ovprof.load_records(store)
    assert list(got.columns) == list(want.columns) and len(got) == 4
    assert list(got["run_id"]) == list(want["run_id"])
    for col in ("config.batch", "config.mask_ratio", "metrics.peak_tracked_bytes", "metrics.step_time_ms_median",
                "derived.fwd_gflops_per_image"):
        pd.testing.assert_series_equal(got[col], want[col], check_dtype=False, check_names=False)
    steps = [json.loads(s) if isinstance(s, str) else None for s in got["metrics.step_times_ms"]]
    assert steps == [v if isinstance(v, list) else None for v in want["metrics.step_times_ms"]]

    code, out, _ = cli_in_process("export", str(store), "--to", "csv", "--all", "--out", str(path))
    assert code == 0 and len(pd.read_csv(path)) == 5  # replaced, every run record


def test_parquet_round_trips_both_kinds(store, cli_in_process):
    pytest.importorskip("pyarrow")
    import pandas as pd

    import ovprof

    for kind, rows in (("run", 4), ("max_batch", 2)):
        code, out, err = cli_in_process("export", str(store), "--to", "parquet", "--kind", kind)
        assert code == 0, err
        path = store.with_name("mini" + ("" if kind == "run" else ".max_batch") + ".parquet")
        got = pd.read_parquet(path)
        want = ovprof.load_records(store, kind=kind)
        assert len(got) == rows and list(got.columns) == list(want.columns)
        assert list(got["run_id"]) == list(want["run_id"])
        assert list(got["config.batch"]) == list(want["config.batch"])
    got = pd.read_parquet(store.with_suffix(".parquet"))
    assert [list(v) for v in got["metrics.step_times_ms"].dropna()] == \
        [v for v in ovprof.load_records(store)["metrics.step_times_ms"] if isinstance(v, list)]


# -- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,needle", [
    (["results/nope.jsonl", "--to", "csv"], "results/nope.jsonl: no such store"),
    (["results/empty.jsonl", "--to", "csv"], "results/empty.jsonl: no run records to export"),
    (["results/empty.jsonl", "--to", "mlflow"], "results/empty.jsonl: no records to export"),
    (["results/mini.jsonl", "--to", "xml"], "--to 'xml': unknown target; choose from mlflow, csv, parquet"),
    (["results/mini.jsonl"], "give --to TARGET"),
    (["results/mini.jsonl", "--to", "mlflow", "--out", "x.csv"], "--out does not apply to --to mlflow"),
    (["results/mini.jsonl", "--to", "csv", "--report", "reports"], "--report does not apply to --to csv"),
    (["results/mini.jsonl", "--to", "csv", "--kind", "all"], "--kind 'all'"),
    (["results/mini.jsonl", "--to", "csv", "--out", "results/mini.jsonl"], "is results/mini.jsonl itself"),
    (["results/mini.jsonl", "--to", "mlflow", "--report", "nowhere"], "--report nowhere: no such folder"),
    (["results/mini.jsonl", "--to", "mlflow", "--tracking-uri", "results/mini.jsonl"], "is a file, not a folder"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, needle, store, tmp_path, monkeypatch,
                                                         cli_in_process):
    if "mlflow" in args and "--out" not in args:
        pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "empty.jsonl").write_text("")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, out, err = cli_in_process("export", *args)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("target,module,extra", [("mlflow", "mlflow", "mlflow"), ("parquet", "pyarrow", "parquet")])
def test_a_missing_library_names_the_extra(target, module, extra, store, monkeypatch, cli_in_process):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    code, _, err = cli_in_process("export", str(store), "--to", target)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"pip install 'ovprof[{extra}]'" in err
    assert sorted(p.name for p in store.parent.iterdir()) == ["mini.jsonl"]


def test_export_help_imports_no_heavy_library():
    code = ("import sys; from ovprof.cli import app; import typer.testing as t; "
            "r = t.CliRunner().invoke(app, ['export', '--help']); assert r.exit_code == 0, r.output; "
            "assert '--tracking-uri' in r.output and \"'ovprof[mlflow]'\" in r.output, r.output; "
            "print([m for m in ('torch', 'deepspeed', 'pandas', 'mlflow', 'pyarrow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, COLUMNS="200"))
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
