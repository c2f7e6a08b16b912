"""Sweep files: expansion (axes, zips, excludes, dedupe, precedence) and every class of bad input via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ovprof.config import ConfigError, RunConfig
from ovprof.errors import UsageError
from ovprof.sweep import spec as S

from conftest import ROOT, ovprof, tiny_toml

TINY_BASE = tiny_toml()
cli = ovprof


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def expand(tmp_path: Path, text: str, sets: list[str] | None = None, budget: float | None = None) -> S.Expansion:
    return S.expand(S.load(write(tmp_path, text)), S.overrides_from_cli(sets or [], budget))


# -- expansion ----------------------------------------------------------------------


def test_axes_are_a_cartesian_product_in_file_order(tmp_path):
    exp = expand(tmp_path, TINY_BASE + '[axes]\nobjective = ["caption", "openvision"]\nzero = [0, 2, 3]\n')
    got = [(p.config.objective, p.config.zero) for p in exp.plans]
    assert got == [("caption", 0), ("caption", 2), ("caption", 3),
                   ("openvision", 0), ("openvision", 2), ("openvision", 3)]
    assert exp.columns == ("objective", "zero")
    assert all(p.config.batch == 2 and p.config.vocab_size == 512 for p in exp.plans)


def test_zip_fields_vary_together_and_cross_the_axes(tmp_path):
    exp = expand(tmp_path, TINY_BASE + """
[axes]
zero = [0, 2]
[[zip]]
mask_ratio = [0.0, 0.5, 0.75]
mask_position = ["decoder", "decoder", "encoder"]
""")
    got = [(p.config.zero, p.config.mask_ratio, p.config.mask_position) for p in exp.plans]
    assert len(got) == 6
    assert got[:3] == [(0, 0.0, "decoder"), (0, 0.5, "decoder"), (0, 0.75, "encoder")]
    assert {g[0] for g in got[3:]} == {2}


def test_exclude_drops_matching_points_and_a_list_means_any_of(tmp_path):
    text = TINY_BASE + """
[axes]
objective = ["caption", "openvision", "clip"]
mask_ratio = [0.0, 0.5]
[[exclude]]
objective = "clip"
mask_ratio = 0.5
[[exclude]]
objective = ["caption", "openvision"]
mask_ratio = 0.0
"""
    exp = expand(tmp_path, text)
    assert [(p.config.objective, p.config.mask_ratio) for p in exp.plans] == [
        ("caption", 0.5), ("openvision", 0.5), ("clip", 0.0)]
    assert exp.excluded == 3


def test_an_invalid_point_names_file_point_and_reason_unless_excluded(tmp_path):
    text = TINY_BASE + '[axes]\nobjective = ["caption", "clip"]\nmask_ratio = [0.0, 0.5]\n'
    with pytest.raises(ConfigError) as e:
        expand(tmp_path, text)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "s.toml"))
    assert "clip has no decoder" in msg and "objective='clip'" in msg and "mask_ratio=0.5" in msg
    assert "[[exclude]]" in msg
    exp = expand(tmp_path, text + '[[exclude]]\nobjective = "clip"\nmask_ratio = 0.5\n')
    assert len(exp.plans) == 3


def test_points_with_the_same_run_id_run_once(tmp_path):
    # "auto" resolves to dec-debug for vit-debug: the same point twice
    exp = expand(tmp_path, TINY_BASE + '[axes]\ndecoder = ["auto", "dec-debug", "dec-debug-wide"]\nzero = [0, 0]\n')
    assert len(exp.plans) == 2 and exp.duplicates == 4
    assert len({p.run_id for p in exp.plans}) == 2


def test_precedence_defaults_then_base_then_axes_then_command_line(tmp_path):
    text = TINY_BASE.replace("batch = 2", "batch = 3\nzero = 1") + "[axes]\nbatch = [4, 5]\nsteps = [6]\n"
    exp = expand(tmp_path, text)
    c = exp.plans[0].config
    assert (c.batch, c.zero, c.steps, c.seed) == (4, 1, 6, RunConfig().seed)  # axes > base > defaults
    exp = expand(tmp_path, text, ["batch=7", "steps=9", "zero=2"], budget=0.5)
    assert len(exp.plans) == 1 and exp.duplicates == 1  # --set batch replaces the axis: one point
    c = exp.plans[0].config
    assert (c.batch, c.steps, c.zero, c.memory_budget_gib) == (7, 9, 2, 0.5)
    assert exp.columns == ()


def test_batch_max_is_a_sweep_level_point_with_its_own_id(tmp_path):
    text = TINY_BASE + '[axes]\nbatch = [2, "max"]\n[max_batch]\nstart = 4\ngranularity = 2\nlimit = 64\n'
    a, b = expand(tmp_path, text).plans
    assert not a.is_max_batch and a.run_id == a.config.run_id
    assert b.is_max_batch and b.config.batch == 4 and b.max_batch == S.MaxBatchOptions(4, 2, 64)
    assert b.record_config()["batch"] == "max" and b.run_id != b.config.run_id
    assert b.run_id == expand(tmp_path, text).plans[1].run_id  # stable
    # --set batch=max turns every point into a search
    assert all(p.is_max_batch for p in expand(tmp_path, text, ["batch=max"]).plans)


def test_shipped_sweep_files_expand(tmp_path):
    files = sorted((ROOT / "sweeps").glob("*.toml"))
    names = {f.name for f in files}
    assert {"quickstart.toml", "paper-vit-l14-224.toml", "paper-so400m14-384.toml", "mask-ratio.toml",
            "zero-stages.toml", "ci-memory.toml"} <= names
    counts = {}
    for f in files:
        text = f.read_text()
        assert text.startswith("#"), f"{f.name} must open with a comment saying what it measures"
        counts[f.name] = len(S.expand(S.load(f)).plans)
    assert 20 <= counts["quickstart.toml"] <= 30
    assert 6 <= counts["ci-memory.toml"] <= 8
    for paper in ("paper-vit-l14-224.toml", "paper-so400m14-384.toml"):
        plans = S.expand(S.load(ROOT / "sweeps" / paper)).plans
        assert all(p.is_max_batch and p.config.checkpointing and p.config.precision == "bf16" for p in plans)
        assert {p.config.zero for p in plans} == {0, 1, 2, 3}
        assert {(p.config.objective, p.config.mask_ratio) for p in plans} == {("openvision", 0.0), ("caption", 0.65)}


def test_plan_json_lists_run_ids_and_resolved_configs(tmp_path):
    f = write(tmp_path, TINY_BASE + '[axes]\nzero = [0, 2]\nbatch = [2, "max"]\n')
    r = cli("sweep", "plan", str(f), "--json", "--set", "steps=3")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert len(got) == 4
    assert got[0]["config"] == RunConfig(encoder="vit-debug", vocab_size=512, caption_len=16, text_len=8, batch=2,
                                         steps=3, warmup=1, zero=0).resolved().to_dict()
    assert got[0]["run_id"] == RunConfig(**{k: v for k, v in got[0]["config"].items()}).run_id
    assert got[1]["config"]["batch"] == "max" and got[1]["max_batch"] == {"start": 1, "granularity": 1, "limit": 4096}
    r = cli("sweep", "plan", str(f), "--set", "steps=3")
    assert r.returncode == 0 and "4 points" in r.stdout and got[3]["run_id"] in r.stdout


# -- bad input: one line, exit 2, nothing run -----------------------------------------------

BAD = [
    ("malformed", "name = \n", [], ["not valid TOML"]),
    ("top-level", TINY_BASE.replace("[base]", 'nmae = "x"\n[base]'), [], ["key 'nmae'", "did you mean 'name'"]),
    ("base", TINY_BASE + 'encodr = "vit-debug"\n', [], ["[base]", "key 'encodr'", "did you mean 'encoder'"]),
    ("axes", TINY_BASE + "[axes]\nzeros = [0, 2]\n", [], ["[axes]", "key 'zeros'", "did you mean 'zero'"]),
    ("zip", TINY_BASE + '[[zip]]\nmask_ratoi = [0.5]\nmask_position = ["decoder"]\n', [],
     ["[[zip]] #1", "key 'mask_ratoi'", "did you mean 'mask_ratio'"]),
    ("exclude", TINY_BASE + '[[exclude]]\nobjectiv = "clip"\n', [],
     ["[[exclude]] #1", "key 'objectiv'", "did you mean 'objective'"]),
    ("max_batch", TINY_BASE + "[max_batch]\ngranularty = 2\n", [],
     ["[max_batch]", "key 'granularty'", "did you mean 'granularity'"]),
    ("set", TINY_BASE, ["--set", "bach=2"], ["--set", "key 'bach'", "did you mean 'batch'"]),
    ("type", TINY_BASE.replace("steps = 2", 'steps = "many"'), [], ["key 'steps'", "'many'", "expected int"]),
    ("mask ratio", TINY_BASE + "[axes]\nmask_ratio = [0.5, 1.2]\n", [], ["key 'mask_ratio'", "1.2", "[0, 1)"]),
    ("batch 0", TINY_BASE + "[axes]\nbatch = [2, 0]\n", [], ["key 'batch'", "value 0", '"max"']),
    ("batch string", TINY_BASE.replace("batch = 2", 'batch = "huge"'), [], ["key 'batch'", "'huge'", '"max"']),
    ("encoder", TINY_BASE.replace('encoder = "vit-debug"', 'encoder = "vit-b17"'), [],
     ["key 'encoder'", "'vit-b17'", "did you mean 'vit-b16'"]),
    ("zero", TINY_BASE + "[axes]\nzero = [0, 5]\n", [], ["key 'zero'", "value 5", "0, 1, 2, 3"]),
    ("world size", TINY_BASE + "world_size = 4096\n", [], ["key 'world_size'", "4096", "exceeds"]),
    ("zip lengths", TINY_BASE + '[[zip]]\nmask_ratio = [0.0, 0.5]\nmask_position = ["decoder"]\n', [],
     ["[[zip]] #1", "key 'mask_position'", "equal length"]),
    ("combination", TINY_BASE + '[axes]\nobjective = ["caption", "clip"]\nmask_ratio = [0.5]\n', [],
     ["clip has no decoder", "objective='clip'"]),
    ("max_batch value", TINY_BASE + "[max_batch]\nstart = 0\n", [], ["[max_batch]", "key 'start'", "positive"]),
    ("axis not a list", TINY_BASE + "[axes]\nzero = 2\n", [], ["[axes]", "key 'zero'", "list"]),
    ("missing file", None, [], ["no such sweep file"]),
    ("launcher", TINY_BASE, ["--launcher", "mpirun"], ["--launcher 'mpirun'", "torchrun or deepspeed"]),
    ("hostfile", TINY_BASE, ["--hostfile", "/nonexistent/hosts"], ["/nonexistent/hosts", "no such hostfile"]),
    ("timeout", TINY_BASE, ["--timeout", "0"], ["--timeout 0", "positive"]),
]
NOT_IN_FILE = ("set", "launcher", "hostfile", "timeout")  # command-line mistakes name the option instead


@pytest.mark.parametrize("case,text,extra,needles", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_exit_2_and_runs_nothing(tmp_path, case, text, extra, needles):
    f = tmp_path / "bad.toml"
    if text is not None:
        f.write_text(text)
    out = tmp_path / "store.jsonl"
    r = cli("sweep", "run", str(f), "--store", str(out), *extra)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert str(f) in lines[0] or case in NOT_IN_FILE
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists() and not (tmp_path / "logs").exists()


def test_plan_rejects_bad_input_too(tmp_path):
    f = write(tmp_path, TINY_BASE + "[axes]\nzero = [0, 5]\n")
    r = cli("sweep", "plan", str(f))
    assert r.returncode == 2 and "key 'zero'" in r.stderr and "Traceback" not in r.stderr


def test_load_errors_are_typed(tmp_path):
    with pytest.raises(UsageError):
        S.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as e:
        S.load(write(tmp_path, "[axes]\nzero = []\n"))
    assert e.value.key == "zero" and "empty" in str(e.value)
    with pytest.raises(ConfigError) as e:
        S.load(write(tmp_path, '[axes]\nzero = [0]\n[[zip]]\nzero = [1]\nbatch = [2]\n'))
    assert "one place" in str(e.value)
    with pytest.raises(ConfigError) as e:
        S.load(write(tmp_path, TINY_BASE + "[max_batch]\nstart = 8\nlimit = 4\n"))
    assert e.value.key == "limit"
    with pytest.raises(ConfigError) as e:
        S.expand(S.load(write(tmp_path, TINY_BASE + '[[exclude]]\nencoder = "vit-debug"\n')))
    assert "drop all" in str(e.value)
