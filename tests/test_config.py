"""RunConfig: validation with one-line errors, stable ids, precedence."""

from __future__ import annotations

import pytest

from ovprof.config import ConfigError, RunConfig, from_mapping, parse_set


def test_run_id_is_stable_and_names_the_resolved_point():
    a = RunConfig(encoder="vit-b16")
    assert a.run_id == RunConfig(encoder="vit-b16").run_id
    # "auto" and the explicit value it resolves to are the same point
    assert a.run_id == RunConfig(encoder="vit-b16", decoder="dec-l", res=224).run_id
    assert a.run_id != RunConfig(encoder="vit-b16", batch=9).run_id
    assert len(a.run_id) == 16


@pytest.mark.parametrize("values,key,needle", [
    ({"bach": 3}, "bach", "did you mean 'batch'"),
    ({"zero": 4}, "zero", "one of 0, 1, 2, 3"),
    ({"mask_ratio": 1.0}, "mask_ratio", "[0, 1)"),
    ({"mask_ratio": -0.1}, "mask_ratio", "[0, 1)"),
    ({"batch": 0}, "batch", "positive"),
    ({"batch": "eight"}, "batch", "expected int"),
    ({"encoder": "vit-b17"}, "encoder", "did you mean 'vit-b16'"),
    ({"precision": "bf61"}, "precision", "did you mean 'bf16'"),
    ({"objective": "clip", "mask_ratio": 0.5}, "mask_position", "no decoder"),
    ({"checkpointing": "maybe"}, "checkpointing", "expected bool"),
])
def test_bad_values_raise_one_line_errors_naming_source_key_and_value(values, key, needle):
    with pytest.raises(ConfigError) as e:
        from_mapping(values, source="sweeps/x.toml")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("sweeps/x.toml")
    assert f"'{key}'" in msg and needle in msg


def test_set_pairs_parse_as_toml_scalars_and_override():
    values = parse_set(["batch=4", "bucket_elems=5e6", "checkpointing=true", "encoder=vit-b16"])
    cfg = from_mapping(values, base=RunConfig(batch=2, zero=2))
    assert (cfg.batch, cfg.bucket_elems, cfg.checkpointing, cfg.encoder, cfg.zero) == (4, 5_000_000, True, "vit-b16", 2)
    with pytest.raises(ConfigError):
        parse_set(["batch"])


def test_configs_are_frozen():
    with pytest.raises(AttributeError):
        RunConfig().batch = 3  # type: ignore[misc]
