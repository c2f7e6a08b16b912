"""Bad input never runs anything: every class below is exit 2, one line on stderr, no worker, no store touched.

Each class is tried with several members (the closing note counts them). The commands run in-process through the
real entry point; a worker would show up as a log folder or a store, and neither may appear.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import TINY, tiny_toml


@pytest.fixture
def cli(cli_in_process, monkeypatch, tmp_path):
    """`ovprof ARGS` in-process, in tmp_path; (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    return cli_in_process


def refused(result, tmp_path: Path, *needles: str) -> None:
    code, out, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(ch.isprintable() for ch in lines[0]), repr(lines[0])
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not list(tmp_path.rglob("logs")), "a worker was started"
    assert not list(tmp_path.rglob("*.jsonl")) or all(p.name == "pre.jsonl" for p in tmp_path.rglob("*.jsonl"))


def _sweep(tmp_path: Path, text: str = "", name: str = "s.toml") -> str:
    f = tmp_path / name
    f.write_text(text or tiny_toml())
    return str(f)


# -- filesystem targets ----------------------------------------------------------------------------------------

def _targets(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "afile").write_text("x")
    return {"a directory": str(tmp_path / "adir"), "a FIFO": str(tmp_path / "fifo"), "a device": "/dev/null",
            "under a regular file": str(tmp_path / "afile" / "s.jsonl")}


@pytest.mark.parametrize("kind", ["a directory", "a FIFO", "a device", "under a regular file"])
@pytest.mark.parametrize("command", ["run --out", "sweep run --store", "sweep plan --store", "check --junit",
                                     "check --update-baseline --baseline", "report --out", "run --ds-config",
                                     "check --results", "estimate --validate"])
def test_every_filesystem_target_is_checked_first(cli, tmp_path, kind, command):
    if command == "report --out" and kind == "a directory":
        pytest.skip("a report's --out is a folder: a directory is what it should be")
    target = _targets(tmp_path)[kind]
    sweep = _sweep(tmp_path)
    store = tmp_path / "pre.jsonl"
    store.write_text("")
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"points": []}))
    argv = {
        "run --out": ["run", "--out", target],
        "sweep run --store": ["sweep", "run", sweep, "--store", target],
        "sweep plan --store": ["sweep", "plan", sweep, "--store", target],
        "check --junit": ["check", "--baseline", str(base), "--results", str(store), "--junit", target],
        "check --update-baseline --baseline": ["check", "--update-baseline", "--baseline", target, "--results",
                                               str(store)],
        "report --out": ["report", str(store), "--out", target],
        "run --ds-config": ["run", "--ds-config", target, "--out", str(tmp_path / "r.jsonl")],
        "check --results": ["check", "--baseline", str(base), "--results", target],
        "estimate --validate": ["estimate", "--validate", target],
    }[command]
    if kind == "a device" and command == "report --out":
        target = "/dev/null/x"  # a folder under a device
        argv[-1] = target
    refused(cli(*argv), tmp_path, command.split()[-1])


@pytest.mark.parametrize("command", ["sweep run", "sweep plan"])
def test_the_sweep_file_itself_as_its_store_is_refused(cli, tmp_path, command):
    sweep = _sweep(tmp_path)
    refused(cli(*command.split(), sweep, "--store", sweep), tmp_path, "itself")
    assert Path(sweep).read_text() == tiny_toml()


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "/abs", "..", "", " ", "x\x1b[31my", "-rf"])
def test_a_sweep_name_that_leaves_its_folder_is_refused(cli, tmp_path, name):
    sweep = _sweep(tmp_path, tiny_toml(f"name = {json.dumps(name)}"))
    refused(cli("sweep", "run", sweep), tmp_path, "name")


# -- types, numbers, sizes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("batch", '"4"'), ("mask_ratio", '"0.5"'), ("steps", "4.5"), ("checkpointing", '"maybe"'),
    ("bucket_elems", '"1e5"'), ("memory_budget_gib", '"1"'), ("zero", "true"), ("res", "[32]"),
    ("seed", "{a = 1}"), ("objective", "3"),
])
def test_types_are_strict(cli, tmp_path, key, value):
    text = tiny_toml() + "" if key not in TINY else tiny_toml(drop=(key,))
    sweep = _sweep(tmp_path, text.replace("[base]\n", f"[base]\n{key} = {value}\n"))
    refused(cli("sweep", "run", sweep), tmp_path, key)


@pytest.mark.parametrize("key,value", [("mask_ratio", "nan"), ("mask_ratio", "inf"), ("memory_budget_gib", "inf"),
                                       ("memory_budget_gib", "nan"), ("caption_weight", "-inf"),
                                       ("contrastive_weight", "nan")])
def test_nan_and_infinity_are_refused_in_sweep_files(cli, tmp_path, key, value):
    sweep = _sweep(tmp_path, tiny_toml().replace("[base]\n", f"[base]\n{key} = {value}\n"))
    refused(cli("sweep", "run", sweep), tmp_path, key)


@pytest.mark.parametrize("argv", [
    ["run", "--timeout", "nan"], ["run", "--timeout", "inf"], ["run", "--timeout", "0"], ["run", "--timeout", "-5"],
    ["run", "--mask-ratio", "nan"], ["run", "--memory-budget", "inf"], ["run", "--memory-budget", "0"],
    ["run", "--set", "caption_weight=nan"], ["run", "--set", "batch=\"8\""], ["run", "--set", "steps=1e9"],
    ["sweep", "run", "SWEEP", "--timeout", "nan"], ["sweep", "run", "SWEEP", "--timeout", "inf"],
    ["sweep", "run", "SWEEP", "--memory-budget", "nan"], ["sweep", "run", "SWEEP", "--max-points", "0"],
    ["estimate", "--device-memory", "0"], ["estimate", "--device-memory", "nan"], ["estimate", "--mfu", "0"],
    ["estimate", "--mfu", "1.5"], ["estimate", "--peak-tflops", "-1"], ["estimate", "--peak-tflops", "inf"],
])
def test_nonsense_numbers_on_the_command_line_are_refused(cli, tmp_path, argv):
    sweep = _sweep(tmp_path)
    refused(cli(*[sweep if a == "SWEEP" else a for a in argv]), tmp_path)


@pytest.mark.parametrize("extra", [
    "steps = 1000000", "warmup = 1000000", "batch = 1000000000000\nres = 100000", "vocab_size = 100000000000000000",
    "world_size = 100000000", "bucket_elems = 9000000000000000000",
])
def test_counts_and_sizes_that_cannot_be_a_measurement_are_refused(cli, tmp_path, extra):
    keys = [ln.split("=")[0].strip() for ln in extra.splitlines()]
    sweep = _sweep(tmp_path, tiny_toml(drop=tuple(keys)).replace("[base]\n", f"[base]\n{extra}\n"))
    refused(cli("sweep", "run", sweep), tmp_path)


# -- sweep files ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", 'name = "x"\n', "[base]\n", "[axes]\n",
                                  'name = "x"\n[base]\n# nothing\n'])
def test_an_empty_or_comment_only_sweep_is_an_error_not_a_default_point(cli, tmp_path, text):
    refused(cli("sweep", "run", _sweep(tmp_path, text or "\n")), tmp_path, "nothing to run")


def test_a_huge_grid_is_refused_before_it_is_enumerated(cli, tmp_path):
    axes = "[axes]\nseed = [" + ", ".join(map(str, range(400))) + "]\nsteps = [" + \
        ", ".join(map(str, range(1, 401))) + "]\n"
    sweep = _sweep(tmp_path, tiny_toml(drop=("steps",)) + axes)
    refused(cli("sweep", "plan", sweep), tmp_path, "160,000 points", "--max-points")


def test_control_characters_in_user_strings_are_escaped(cli, tmp_path):
    sweep = _sweep(tmp_path, tiny_toml() + '"\\u001b[2Jbad\\u0007" = 1\n')
    refused(cli("sweep", "run", sweep), tmp_path, "\\x1b")
    long_value = "v" * 5000
    sweep = _sweep(tmp_path, tiny_toml(drop=("encoder",)).replace("[base]\n", f'[base]\nencoder = "{long_value}"\n'))
    code, out, err = cli("sweep", "run", sweep)
    assert code == 2 and len(err) < 1200
