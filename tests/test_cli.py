"""The command line as a user meets it: fast help, JSON for scripts, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, ovprof


def test_help_imports_neither_torch_nor_deepspeed():
    code = ("import sys; from ovprof.cli import app; import typer.testing as t; "
            "r = t.CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'deepspeed', 'pandas') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("cmd", [["--help"], ["run", "--help"], ["models", "--help"], ["env", "--help"]])
def test_every_help_works(cmd):
    r = ovprof(*cmd)
    assert r.returncode == 0 and "Usage" in r.stdout


def test_models_json_acceptance_sizes():
    r = ovprof("models", "--json")
    assert r.returncode == 0, r.stderr
    enc = {e["encoder"]: e for e in json.loads(r.stdout)["encoders"]}
    for name, want in (("vit-l14", 304e6), ("vit-g14", 1.01e9), ("vit-b16", 86e6)):
        assert abs(enc[name]["encoder_params"] / want - 1) < 0.02
    assert enc["vit-l14"]["params_by_tower"]["total"] > enc["vit-l14"]["encoder_params"]
    assert enc["vit-l14"]["train_gflops_per_image"] > enc["vit-l14"]["fwd_gflops_per_image"]


def test_models_objectives_lists_the_registry():
    from ovprof import objectives

    r = ovprof("models", "--objectives", "--json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)["objectives"]
    assert [o["name"] for o in listed] == objectives.names()
    cap = next(o for o in listed if o["name"] == "caption")
    assert cap["towers"] == ["encoder", "decoder"] and cap["savings_side"] == "caption" and cap["label"]
    table = ovprof("models", "--objectives")
    assert table.returncode == 0 and all(n in table.stdout for n in objectives.names())


def test_env_json_has_the_record_block():
    r = ovprof("env", "--json")
    e = json.loads(r.stdout)
    for k in ("torch", "deepspeed", "cpu_count", "hostname", "git_sha", "gpu_name"):
        assert k in e


@pytest.mark.parametrize("args,needle", [
    (["run", "--zero", "5"], "key 'zero', value 5"),
    (["run", "--set", "bach=3"], "did you mean 'batch'"),
    (["run", "--ds-config", "missing.json"], "missing.json"),
    (["run", "--world-size", "999"], "world_size"),
    (["run", "--mask-ratio", "1.5"], "mask_ratio"),
    (["models", "--objective", "nope"], "objective"),
])
def test_bad_input_is_one_line_exit_2_and_no_traceback(args, needle, tmp_path):
    r = ovprof(*args, "--out", str(tmp_path / "x.jsonl")) if args[0] == "run" else ovprof(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "x.jsonl").exists()
