"""Frozen run configuration: what one measured point is, and its stable id.

    ovprof run --objective caption --encoder vit-debug --batch 8 --steps 10

Precedence: the defaults here, then a sweep file, then the command line. A
`RunConfig` is validated when built; `resolved()` replaces "auto" fields so that
`run_id` (a hash of the canonical JSON of the resolved config) names the point
exactly. Execution details that do not change what is measured (store path,
timeout, launcher) live in `ExecOptions` and are not part of the id.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from ovprof import objectives, presets
from ovprof.errors import ConfigError  # noqa: F401 - re-exported: `from ovprof.config import ConfigError`

OBJECTIVES = tuple(objectives.names())  # the registry, ovprof/objectives/
MASK_POSITIONS = ("decoder", "encoder")
PRECISIONS = ("bf16", "fp16", "fp32")
LOSS_IMPLS = ("eager", "chunked", "triton", "compiled")  # compiled: eager under torch.compile (docs/levers.md)
# torch AdamW's implementation (docs/levers.md). Left to itself (DeepSpeed passes foreach=None) torch picks
# "foreach" only when every parameter is on CUDA, so the optimizer step's memory would differ between CPU and GPU;
# ovprof always names one. "forloop" (one tensor at a time) is what CPU runs have always used, so CPU records and
# baselines are unchanged. "fused" is torch's single-kernel AdamW (CUDA, and CPU since torch 2.4).
OPTIMIZER_IMPLS = ("forloop", "foreach", "fused")
DEFAULT_OPTIMIZER_IMPL = "forloop"
# Adam's moments: fp32 both, or bf16 = the first moment (exp_avg) stored in bf16, the second (exp_avg_sq) in fp32,
# as OpenVision 2 does (optax adamw with mu_dtype=bfloat16). Implemented by ovprof/kernels/adamw.py (for-loop).
OPTIMIZER_STATE_DTYPES = ("fp32", "bf16")
# scaled_dot_product_attention's backend, applied with torch.nn.attention.sdpa_kernel around every step; auto lets
# torch choose. Which ones this machine has: ovprof/measure/hardware.attention_backends (checked by the worker).
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "math", "cudnn")
# torch.compile of the model through DeepSpeed's engine.compile (inductor), mode as torch.compile's; none = eager.
COMPILE_MODES = ("none", "default", "max-autotune")


def optimizer_impl(cfg: "RunConfig") -> str:
    """The AdamW implementation `cfg` runs: the one place it is chosen (the DeepSpeed config and the estimate ask
    here)."""
    return cfg.optimizer_impl


@dataclass(frozen=True)
class RunConfig:
    """One measured point. Every field changes what is measured, so all enter run_id."""

    # caption (OpenVision 2) | clip | openvision (OpenVision 1) | mae | pixio; see `ovprof models --objectives`
    objective: str = "caption"
    encoder: str = "vit-debug"  # vision preset, see `ovprof models`
    text_encoder: str = "auto"  # text tower for clip/openvision; auto pairs it with the encoder
    decoder: str = "auto"  # caption decoder for caption/openvision; auto = dec-l (dec-debug for vit-debug)
    res: int = 0  # image side in pixels; 0 = the encoder's native resolution
    mask_ratio: float = 0.0  # share of visual tokens dropped, in [0, 1); 0 = no masking (mae/pixio: their 0.75)
    # decoder: drop encoder outputs (OpenVision 2); encoder: drop patches (FLIP; mae/pixio always)
    mask_position: str = "decoder"
    batch: int = 8  # micro-batch per rank (images)
    world_size: int = 1  # ranks (processes), one device each
    zero: int = 0  # DeepSpeed ZeRO stage 0-3
    precision: str = "fp32"  # bf16 | fp16 | fp32; GPUs want bf16 (CPUs without AVX512-BF16 run it ~10x slower)
    steps: int = 10  # timed steps
    warmup: int = 3  # untimed steps before them
    seed: int = 0  # synthetic data and init seed
    checkpointing: bool = False  # activation checkpointing on the vision encoder's blocks (as both papers)
    checkpointing_text: bool = False  # ... and on the text encoder's and decoder's blocks (caption or pixel)
    vocab_size: int = 32000  # tokenizer size of the papers
    caption_len: int = 128  # synthetic caption tokens the decoder predicts (papers: 128)
    text_len: int = 80  # text-encoder context (OpenVision: 80)
    contrastive_weight: float = 1.0  # OpenVision loss = 1 x contrastive + 2 x caption
    caption_weight: float = 2.0  # OpenVision 2 loss = 2 x caption cross-entropy
    loss_impl: str = "eager"  # caption head + cross-entropy implementation
    bucket_elems: int | None = None  # DeepSpeed reduce/allgather bucket (elements); None = DeepSpeed default 5e8
    memory_budget_gib: float | None = None  # emulate a smaller device (per rank); None = the device's own
    ds_config_base: str = "{}"  # user's base DeepSpeed config, canonical JSON; ours is merged over it
    breakdown: bool = False  # after all measured steps, one profiled step: time and memory by module group
    # ZeRO 0 at world size 1: DeepSpeed still flattens every gradient into one buffer, all-reduces it over the one
    # rank and copies it back (a gradient-sized buffer, four passes over the gradients; docs/profile.md). false:
    # the engine skips it (enable_backward_allreduce=False), as a plain loop does. Refused at world size > 1.
    single_rank_allreduce: bool = True
    # The pixel objectives' own fields (mae, pixio: ovprof/objectives/mae.py); any other objective refuses a
    # value other than the default. Defaults resolve per objective (MAE's, or Pixio's).
    pixel_decoder: str = "auto"  # pixel decoder preset; auto = dec-mae (MAE), dec-pixio (Pixio), debug for vit-debug
    mask_grid: int = 0  # masking block side in patches (1 = per patch); 0 = MAE 1, Pixio 4; must divide the grid
    cls_tokens: int | None = None  # learned class tokens of the encoder; none = MAE 1, Pixio 8
    norm_pix_loss: bool = True  # pixel targets normalised per patch (MAE's norm_pix_loss, Pixio's default)
    optimizer_impl: str = "forloop"  # torch AdamW: forloop (one tensor at a time) | foreach | fused
    optimizer_state_dtype: str = "fp32"  # Adam's moments: fp32, or bf16 = first moment in bf16 (OpenVision 2)
    grad_accum: int = 1  # micro-steps (of `batch` each) per optimizer step; a timed step is one optimizer step
    attention: str = "auto"  # SDPA backend: auto | flash | efficient | math | cudnn (torch.nn.attention)
    compile: str = "none"  # torch.compile mode of the model: none (eager) | default | max-autotune

    def __post_init__(self) -> None:
        validate(self)

    # -- identity ---------------------------------------------------------------
    def resolved(self) -> "RunConfig":
        enc = presets.ENCODERS[self.encoder]
        changes: dict[str, Any] = {}
        if self.text_encoder == "auto":
            changes["text_encoder"] = presets.auto_text_encoder(self.encoder)
        if self.decoder == "auto":
            changes["decoder"] = presets.auto_decoder(self.encoder)
        if self.res == 0:
            changes["res"] = enc.native_res
        c = dataclasses.replace(self, **changes) if changes else self
        # then the objective's own "auto" values (e.g. mae's mask ratio, pixel decoder, class tokens)
        own = objectives.get(c.objective).resolve(c)
        return dataclasses.replace(c, **own) if own else c

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def canonical_json(self) -> str:
        d = self.resolved().to_dict()
        for k in ID_STABLE_FIELDS:  # at its default, a field added later leaves every earlier run_id as it was
            if d[k] == DEFAULTS[k]:
                del d[k]
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @property
    def run_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    # -- derived quantities -----------------------------------------------------
    @property
    def num_patches(self) -> int:
        r = self.resolved()
        return (r.res // presets.ENCODERS[r.encoder].patch) ** 2

    @property
    def kept_tokens(self) -> int:
        """Visual tokens kept per sample after masking, as the objective masks: round(N * (1 - mask_ratio)), at
        least 1, for random per-token masking; whole blocks for mae/pixio."""
        r = self.resolved()
        return objectives.get(r.objective).kept_tokens(r)

    @property
    def uses_text_encoder(self) -> bool:
        return objectives.get(self.objective).uses_text_encoder

    @property
    def uses_decoder(self) -> bool:
        return objectives.get(self.objective).uses_decoder


@dataclass(frozen=True)
class ExecOptions:
    """How a point is executed; does not change what is measured, so not in run_id."""

    store: str = "results/runs.jsonl"  # JSONL store the record is appended to
    timeout_s: float = 1800.0  # wall-clock limit of the worker
    launcher: str = "torchrun"  # torchrun | deepspeed (for world_size > 1)
    hostfile: str | None = None  # DeepSpeed hostfile for multi-node runs
    log_dir: str | None = None  # where worker logs go; default: <store dir>/logs


FIELD_NAMES = tuple(f.name for f in fields(RunConfig))
# Fields added after records and baselines were written, whose default reproduces what ran before they existed.
# At its default such a field is left out of run_id, so existing stores resume and match as they did. Add each
# new field here (docs/architecture.md, "Add a sweep axis"); never remove one.
ID_STABLE_FIELDS: tuple[str, ...] = ("pixel_decoder", "mask_grid", "cls_tokens", "norm_pix_loss", "optimizer_impl",
                                    "optimizer_state_dtype", "grad_accum", "attention", "compile", "breakdown",
                                    "single_rank_allreduce")
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(RunConfig)}  # the one copy of the defaults
_FIELD_TYPES = {f.name: f.type for f in fields(RunConfig)}


def config_field_types() -> dict[str, str]:
    """Each RunConfig field's declared type, as text ("int", "float | None", ...): records are checked against it."""
    return dict(_FIELD_TYPES)


def _check(cond: bool, key: str, value: Any, msg: str, hint: str | None = None) -> None:
    if not cond:
        raise ConfigError(msg, key=key, value=value, hint=hint)


def _choice(key: str, value: Any, options) -> None:
    if value not in options:
        near = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
        hint = f"did you mean {near[0]!r}?" if near else None
        raise ConfigError(f"must be one of {', '.join(map(str, options))}", key=key, value=value, hint=hint)


MAX_STEPS = 100_000  # timed or warm-up steps: beyond this a point is not a measurement but a training run
MAX_ELEMENTS = 2**62  # a tensor the step would build with more elements than this cannot be represented


def _check_types(c: RunConfig) -> None:
    """Each field of the declared type, numbers finite (a RunConfig built in Python skips coercion)."""
    for f in fields(c):
        v, typ = getattr(c, f.name), _FIELD_TYPES[f.name]
        if v is None and typ.endswith("| None"):
            continue
        base = typ.replace(" | None", "")
        ok = {"int": isinstance(v, int) and not isinstance(v, bool),
              "float": isinstance(v, (int, float)) and not isinstance(v, bool),
              "bool": isinstance(v, bool), "str": isinstance(v, str)}.get(base, True)
        if not ok:
            raise ConfigError(f"expected {typ.replace(' | None', ' or none')}", key=f.name, value=v)
        if base == "float" and not math.isfinite(v):
            raise ConfigError("must be a finite number (not NaN or infinity)", key=f.name, value=v)


def validate(c: RunConfig) -> None:
    objective = objectives.get(c.objective)  # ConfigError naming the known objectives, whatever the value's type
    _check_types(c)
    _choice("encoder", c.encoder, tuple(presets.ENCODERS))
    if c.text_encoder != "auto":
        _choice("text_encoder", c.text_encoder, ("auto", *presets.TEXT_ENCODERS))
    if c.decoder != "auto":
        _choice("decoder", c.decoder, ("auto", *presets.DECODERS))
    _choice("mask_position", c.mask_position, MASK_POSITIONS)
    _choice("precision", c.precision, PRECISIONS)
    _choice("loss_impl", c.loss_impl, LOSS_IMPLS)
    _choice("zero", c.zero, (0, 1, 2, 3))
    _choice("optimizer_impl", c.optimizer_impl, OPTIMIZER_IMPLS)
    _choice("optimizer_state_dtype", c.optimizer_state_dtype, OPTIMIZER_STATE_DTYPES)
    _choice("attention", c.attention, ATTENTION_BACKENDS)
    _choice("compile", c.compile, COMPILE_MODES)
    _check((c.compile == "none" and c.loss_impl != "compiled") or c.warmup >= 1, "warmup", c.warmup, "must be >= 1 with compile: the first step "
                                                                       "compiles, and is never a timed one")
    _check(c.optimizer_state_dtype == "fp32" or c.optimizer_impl == "forloop", "optimizer_state_dtype",
           c.optimizer_state_dtype, f"bf16 moments are implemented for optimizer_impl forloop only, not "
                                    f"{c.optimizer_impl}")
    _check(c.grad_accum >= 1, "grad_accum", c.grad_accum, "must be a positive integer (micro-steps per step)")
    _check(0.0 <= c.mask_ratio < 1.0, "mask_ratio", c.mask_ratio, "must be in [0, 1)")
    _check(c.batch >= 1, "batch", c.batch, "must be a positive integer")
    _check(c.world_size >= 1, "world_size", c.world_size, "must be a positive integer")
    _check(c.steps >= 1, "steps", c.steps, "must be at least 1 (timed steps)")
    _check(c.warmup >= 0, "warmup", c.warmup, "must be >= 0")
    _check(c.vocab_size >= 2, "vocab_size", c.vocab_size, "must be >= 2")
    _check(c.caption_len >= 2, "caption_len", c.caption_len, "must be >= 2 (one token is predicted from another)")
    _check(c.text_len >= 1, "text_len", c.text_len, "must be >= 1")
    _check(c.res >= 0, "res", c.res, "must be a positive number of pixels (0 = native)")
    for key, owners in objectives.owned_fields().items():  # a field this objective does not read stays default
        value = getattr(c, key)
        if c.objective not in owners and value != DEFAULTS[key]:
            raise ConfigError(f"applies to {', '.join(owners)} only; {c.objective} does not read it", key=key,
                              value=value, hint=f"leave it at {DEFAULTS[key]!r} or drop the point")
    if c.res:
        patch = presets.ENCODERS[c.encoder].patch
        # Not a multiple is fine (SoViT-400M/14@384 has 27 x 27 patches; the stride drops the rest).
        _check(c.res >= patch, "res", c.res, f"is smaller than the patch size {patch} of {c.encoder}")
    objective.validate(c)  # what this objective cannot run (clip: decoder-side masking)
    _check(c.bucket_elems is None or c.bucket_elems >= 1, "bucket_elems", c.bucket_elems, "must be a positive integer")
    _check(c.memory_budget_gib is None or c.memory_budget_gib > 0, "memory_budget_gib", c.memory_budget_gib,
           "must be a positive number of GiB")
    try:
        base = json.loads(c.ds_config_base)
    except json.JSONDecodeError as e:
        raise ConfigError(f"is not valid JSON ({e.msg})", key="ds_config_base", value=c.ds_config_base[:40]) from None
    _check(isinstance(base, dict), "ds_config_base", c.ds_config_base[:40], "must be a JSON object")
    if "optimizer" in base:  # the base's own optimizer runs as written: ovprof's optimizer fields would not apply
        for k in ("optimizer_impl", "optimizer_state_dtype"):
            _check(getattr(c, k) == DEFAULTS[k], k, getattr(c, k), "does not apply: the DeepSpeed base config "
                                                                    "names its own optimizer")
    if c.mask_position == "encoder" and c.mask_ratio > 0:
        _check(c.kept_tokens >= 1, "mask_ratio", c.mask_ratio, "keeps no patch")
    _check(c.grad_accum <= MAX_STEPS, "grad_accum", c.grad_accum, f"is above {MAX_STEPS:,} micro-steps per step")
    _check(c.steps <= MAX_STEPS, "steps", c.steps, f"is above {MAX_STEPS:,}: a measurement needs tens of steps")
    _check(c.warmup <= MAX_STEPS, "warmup", c.warmup, f"is above {MAX_STEPS:,}: warm-up needs a few steps")
    _check(c.world_size <= 2**20, "world_size", c.world_size, "is more ranks than any cluster has")
    _check(c.single_rank_allreduce or c.world_size == 1, "single_rank_allreduce", c.single_rank_allreduce,
           "false skips the gradient all-reduce, which only a single rank may do (world_size 1)")
    res = c.res or presets.ENCODERS[c.encoder].native_res
    images = c.batch * 3 * res * res
    _check(images < MAX_ELEMENTS, "batch", c.batch, f"at res {res} the image batch ({images:.3g} elements) cannot be "
                                                     "represented")
    logits = c.batch * max(c.caption_len, c.text_len) * c.vocab_size
    _check(logits < MAX_ELEMENTS, "vocab_size", c.vocab_size, f"with batch {c.batch} the logits ({logits:.3g} "
                                                                "elements) cannot be represented")
    _check(c.vocab_size * 4096 < MAX_ELEMENTS, "vocab_size", c.vocab_size, "the embedding cannot be represented")
    _check(c.bucket_elems is None or c.bucket_elems < MAX_ELEMENTS, "bucket_elems", c.bucket_elems,
           "cannot be represented")
    _check(c.memory_budget_gib is None or c.memory_budget_gib < 2**30, "memory_budget_gib", c.memory_budget_gib,
           "is more memory than any device has")


def _coerce(key: str, value: Any, source: str | None) -> Any:
    """Convert a TOML/CLI value to the field's type, or raise a one-line ConfigError."""
    typ = _FIELD_TYPES[key]
    try:
        if typ == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise TypeError
        if typ == "int" or typ == "int | None":
            if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
                if typ == "int":
                    raise TypeError
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError  # strict: the string "4" is not the number 4
            if isinstance(value, float):
                if not (math.isfinite(value) and value.is_integer()):
                    raise TypeError
                return int(value)
            return value
        if typ == "float" or typ == "float | None":
            if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
                if typ == "float":
                    raise TypeError
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            if not math.isfinite(value):
                raise TypeError
            return float(value)
        if typ == "str":
            if key == "ds_config_base" and isinstance(value, Mapping):
                return json.dumps(value, sort_keys=True, separators=(",", ":"))
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise TypeError
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError("must be a finite number (not NaN or infinity)", source=source, key=key, value=value)
    raise ConfigError(f"expected {typ.replace(' | None', ' or none')}", source=source, key=key, value=value)


coerce = _coerce  # public: sweep files coerce values field by field


def unknown_key_error(key: str, source: str | None, options=FIELD_NAMES) -> ConfigError:
    near = difflib.get_close_matches(key, options, n=1)
    hint = f"did you mean '{near[0]}'?" if near else f"known keys: {', '.join(options)}"
    return ConfigError("unknown key", source=source, key=key, hint=hint)


def from_mapping(values: Mapping[str, Any], *, base: RunConfig | None = None, source: str | None = None) -> RunConfig:
    """Build a RunConfig from loose values (TOML table, --set pairs), naming bad keys and values."""
    changes = {}
    for key, value in values.items():
        if key not in FIELD_NAMES:
            raise unknown_key_error(key, source)
        changes[key] = _coerce(key, value, source)
    try:
        return dataclasses.replace(base or RunConfig(), **changes)
    except ConfigError as e:
        if source and not e.source:
            raise ConfigError(e.detail, source=source, key=e.key, value=e.value, hint=e.hint) from None
        raise


def parse_set(pairs: list[str], source: str = "--set") -> dict[str, Any]:
    """Parse ['field=value', ...] from the command line; values are parsed as TOML scalars."""
    import tomllib

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError("expected field=value", source=source, key=pair)
        key, raw = pair.split("=", 1)
        key = key.strip()
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw
    return out

