"""Sweep files: a TOML grid over RunConfig fields, expanded into one frozen `RunPlan` per point.

    ovprof sweep plan sweeps/quickstart.toml --set steps=5

A sweep file has [base] (fixed fields), [axes] (field -> list; cartesian
product), [[zip]] (fields that vary together), [[exclude]] (drop matching
points) and [max_batch] (options of the search for points with batch = "max");
docs/sweeps.md describes the format. Precedence per point: RunConfig defaults,
then [base], then the axes and zips, then the command line (--set,
--memory-budget). Every value goes through `config.from_mapping`, so a bad key
or value is one ConfigError naming the file, the key and the value. Nothing
here imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ovprof import config as C
from ovprof.config import ConfigError, RunConfig, from_mapping, unknown_key_error
from ovprof.errors import UsageError
from ovprof.paths import plain_name
from ovprof.runner import cluster

MAX = "max"  # the sweep-level batch value that asks for the max-batch search
TOP_KEYS = ("name", "description", "store", "timeout_s", "base", "axes", "zip", "exclude", "max_batch", "executor")
EXECUTOR_KEYS = ("slots", *cluster.KEYS)  # ovprof/runner/cluster.py: executor = "submitit" and its options
MAX_BATCH_KEYS = ("start", "granularity", "limit")
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class MaxBatchOptions:
    """The search for the largest batch that runs: doubling from `start`, then bisection."""

    start: int = 1  # first batch tried; doubled until the first oom or `limit`
    granularity: int = 1  # bisection stops when (first oom) - (last ok) <= granularity
    limit: int = 4096  # never try a batch above this

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SweepSpec:
    """A parsed, type-checked sweep file. Values are already coerced to the RunConfig field types."""

    path: str  # the file, as given (used as `source` in every error)
    name: str  # default: the file's stem
    description: str
    store: str  # default: results/<name>.jsonl
    timeout_s: float  # per point (per trial of a max-batch search)
    base: dict[str, Any]  # field -> value
    axes: tuple[tuple[str, tuple], ...]  # (field, values) in file order
    zips: tuple[tuple[tuple[str, tuple], ...], ...]  # each: (field, values) of equal length
    excludes: tuple[dict[str, tuple], ...]  # each: field -> accepted values (a point matching all is dropped)
    max_batch: MaxBatchOptions
    slots: int = 1  # [executor] slots: points run at once on disjoint devices (--slots overrides)
    # [executor] executor, cluster, partition, ...: checked values, resolved with the flags by cluster.resolve
    executor: dict[str, Any] = field(default_factory=dict)

    @property
    def grid_fields(self) -> tuple[str, ...]:
        """Fields that the axes and zips vary, in file order."""
        out = [k for k, _ in self.axes]
        for z in self.zips:
            out += [k for k, _ in z]
        return tuple(out)


@dataclass(frozen=True)
class RunPlan:
    """One point of a sweep: a validated RunConfig, or a max-batch search around one."""

    config: RunConfig  # for a max-batch point: batch = max_batch.start, the first trial
    varying: tuple[tuple[str, Any], ...]  # the grid fields of this point, for tables and messages
    max_batch: MaxBatchOptions | None = None  # set when the point's batch is "max"

    @property
    def is_max_batch(self) -> bool:
        return self.max_batch is not None

    def record_config(self) -> dict[str, Any]:
        """The resolved config as stored; batch is "max" for a max-batch point."""
        d = self.config.resolved().to_dict()
        if self.is_max_batch:
            d["batch"] = MAX
        return d

    @property
    def run_id(self) -> str:
        if not self.is_max_batch:
            return self.config.run_id
        canonical = json.dumps(self.record_config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def label(self) -> str:
        """The point's varying fields, e.g. 'objective=clip zero=2'; the run_id when nothing varies."""
        parts = [f"{k}={_show(v)}" for k, v in self.varying]
        return " ".join(parts) if parts else self.run_id


@dataclass(frozen=True)
class Expansion:
    spec: SweepSpec
    plans: tuple[RunPlan, ...]
    excluded: int  # points an [[exclude]] dropped
    duplicates: int  # points with the run_id of an earlier point, run once
    overrides: dict[str, Any] = field(default_factory=dict)  # command-line values, highest precedence

    @property
    def columns(self) -> tuple[str, ...]:
        """Grid fields whose value differs between points (what a table needs to tell them apart)."""
        cols = []
        for k in dict.fromkeys(k for p in self.plans for k, _ in p.varying):
            if len({json.dumps(dict(p.varying).get(k), sort_keys=True) for p in self.plans}) > 1:
                cols.append(k)
        return tuple(cols)

    @property
    def fixed(self) -> dict[str, Any]:
        """Values every point shares: [base], grid fields with one value, and the command line."""
        grid = set(self.spec.grid_fields)
        out = {k: v for k, v in self.spec.base.items() if k not in grid}
        out.update({k: v for k, v in self.plans[0].varying if k not in self.columns})
        out.update(self.overrides)
        return out


def _show(v: Any) -> str:
    return str(v)


# -- loading ----------------------------------------------------------------------


def field_value(key: str, value: Any, source: str, here: Path | None = None) -> Any:
    """One value of a RunConfig field, coerced to its type; batch also accepts "max"; ds_config_base also a path
    to a JSON file (relative to the sweep file's folder, `here`)."""
    if key not in C.FIELD_NAMES:
        raise unknown_key_error(key, source)
    if key == "ds_config_base" and isinstance(value, str) and not value.lstrip().startswith("{"):
        return load_ds_base(Path(value) if here is None or Path(value).is_absolute() else here / value,
                            source=source, key=key)
    if key == "batch":
        if value == MAX:
            return MAX
        bad = ConfigError('must be a positive integer or "max"', source=source, key=key, value=value)
        try:
            n = C.coerce(key, value, source)
        except ConfigError:
            raise bad from None
        if n < 1:
            raise bad
        return n
    return C.coerce(key, value, source)


def load_ds_base(path: Path, *, source: str, key: str = "ds_config_base") -> str:
    """A DeepSpeed base config file as canonical JSON; a ConfigError naming the file, the key and the value."""
    import json

    try:
        if not path.is_file():
            raise ConfigError("no such DeepSpeed config file" if not path.exists() else "not a regular file",
                              source=source, key=key, value=str(path))
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read it ({type(e).__name__})", source=source, key=key, value=str(path)) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON (line {e.lineno}: {e.msg})", source=source, key=key,
                          value=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError("a DeepSpeed config must be a JSON object", source=source, key=key, value=str(path))
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _table(data: Any, what: str, source: str) -> dict:
    if not isinstance(data, dict):
        raise ConfigError(f"expected a table {what}", source=source, value=_brief(data))
    return data


def _brief(v: Any) -> Any:
    """v, or its repr cut in the middle when long: both ends stay (a path's file name is at its end)."""
    s = repr(v)
    return v if len(s) <= 60 else s[:27] + "..." + s[-30:]


def _values(key: str, raw: Any, source: str, here: Path | None = None) -> tuple:
    if not isinstance(raw, list):
        raise ConfigError("expected a list of values (a single value belongs in [base])", source=source, key=key,
                          value=_brief(raw))
    if not raw:
        raise ConfigError("is an empty list, which gives no points", source=source, key=key)
    return tuple(field_value(key, v, source, here) for v in raw)


def _positive_int(key: str, value: Any, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("must be a positive integer", source=source, key=key, value=value)
    return value


def load(path: str | Path) -> SweepSpec:
    """Parse and type-check a sweep file. Raises UsageError (no file) or ConfigError (anything else)."""
    src = str(path)
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{src}: no such sweep file" if not p.exists() else f"{src}: not a file")
    try:
        data = tomllib.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text ({e.reason} at byte {e.start})", source=src) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", source=src) from None

    for key in data:
        if key not in TOP_KEYS:
            raise unknown_key_error(key, src, TOP_KEYS)

    if not any(data.get(k) for k in ("base", "axes", "zip")):
        raise ConfigError("has no [base], [axes] or [[zip]] with a field in it: nothing to run (an empty file "
                          "is not a default point)", source=src)
    name = data.get("name", p.stem)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("must be a non-empty string", source=src, key="name", value=name)
    try:
        plain_name(name, "name")
    except UsageError:
        raise ConfigError("must be a plain name: letters, digits and - _ . + @ (it names results/NAME.jsonl and "
                          "reports/NAME/)", source=src, key="name", value=name) from None
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("must be a string", source=src, key="description", value=_brief(description))
    store = data.get("store", f"results/{name}.jsonl")
    if not isinstance(store, str) or not store.strip():
        raise ConfigError("must be a path (a non-empty string)", source=src, key="store", value=store)
    timeout_s = data.get("timeout_s", DEFAULT_TIMEOUT_S)
    if (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s)
            or timeout_s <= 0):
        raise ConfigError("must be a positive number of seconds", source=src, key="timeout_s", value=timeout_s)

    s_base = f"{src} [base]"
    here = p.parent
    base = {k: field_value(k, v, s_base, here)
            for k, v in _table(data.get("base", {}), "[base]", s_base).items()}

    s_axes = f"{src} [axes]"
    axes = tuple((k, _values(k, v, s_axes, here))
                 for k, v in _table(data.get("axes", {}), "[axes]", s_axes).items())

    seen = {k: "[axes]" for k, _ in axes}
    zips = []
    raw_zips = data.get("zip", [])
    if not isinstance(raw_zips, list):
        raise ConfigError("expected [[zip]] tables (an array of tables)", source=src, key="zip")
    for i, z in enumerate(raw_zips, 1):
        s_zip = f"{src} [[zip]] #{i}"
        z = _table(z, "[[zip]]", s_zip)
        if not z:
            raise ConfigError("is empty; give two or more fields with lists of equal length", source=s_zip)
        group = tuple((k, _values(k, v, s_zip, here)) for k, v in z.items())
        lengths = {k: len(v) for k, v in group}
        if len(set(lengths.values())) > 1:
            first = group[0][0]
            odd = next(k for k, n in lengths.items() if n != lengths[first])
            raise ConfigError(f"has {lengths[odd]} values but '{first}' has {lengths[first]}; the lists of a "
                              "[[zip]] vary together and need equal lengths", source=s_zip, key=odd)
        for k, _ in group:
            if k in seen:
                raise ConfigError(f"varies in both {seen[k]} and [[zip]] #{i}; a field varies in one place only",
                                  source=s_zip, key=k)
            seen[k] = f"[[zip]] #{i}"
        zips.append(group)

    excludes = []
    raw_ex = data.get("exclude", [])
    if not isinstance(raw_ex, list):
        raise ConfigError("expected [[exclude]] tables (an array of tables)", source=src, key="exclude")
    for i, ex in enumerate(raw_ex, 1):
        s_ex = f"{src} [[exclude]] #{i}"
        ex = _table(ex, "[[exclude]]", s_ex)
        if not ex:
            raise ConfigError("is empty, which would drop every point", source=s_ex)
        rule = {}
        for k, v in ex.items():
            vals = v if isinstance(v, list) else [v]
            if not vals:
                raise ConfigError("is an empty list, which matches nothing", source=s_ex, key=k)
            rule[k] = tuple(field_value(k, x, s_ex) for x in vals)
        excludes.append(rule)

    s_mb = f"{src} [max_batch]"
    mb = _table(data.get("max_batch", {}), "[max_batch]", s_mb)
    for k in mb:
        if k not in MAX_BATCH_KEYS:
            raise unknown_key_error(k, s_mb, MAX_BATCH_KEYS)
    mbo = MaxBatchOptions(**{k: _positive_int(k, v, s_mb) for k, v in mb.items()})
    if mbo.limit < mbo.start:
        raise ConfigError(f"is below start = {mbo.start}", source=s_mb, key="limit", value=mbo.limit)

    s_ex = f"{src} [executor]"
    ex = _table(data.get("executor", {}), "[executor]", s_ex)
    for k in ex:
        if k not in EXECUTOR_KEYS:
            raise unknown_key_error(k, s_ex, EXECUTOR_KEYS)
    slots = ex.get("slots", 1)
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ConfigError("must be a positive integer (points run at once)", source=s_ex, key="slots", value=slots)
    executor = {k: cluster.check_value(k, v, s_ex) for k, v in ex.items() if k != "slots"}
    cluster.resolve(executor, s_ex, {})  # submitit keys without executor = "submitit", ...: refused at load
    return SweepSpec(path=src, name=name, description=description.strip(), store=store, timeout_s=float(timeout_s),
                     base=base, axes=axes, zips=tuple(zips), excludes=tuple(excludes), max_batch=mbo, slots=slots,
                     executor=executor)


def overrides_from_cli(pairs: list[str], memory_budget_gib: float | None = None) -> dict[str, Any]:
    """--set field=value pairs (and --memory-budget), checked and coerced; they win over the file."""
    raw = C.parse_set(pairs)
    out = {k: field_value(k, v, "--set") for k, v in raw.items()}
    if memory_budget_gib is not None:
        out["memory_budget_gib"] = field_value("memory_budget_gib", memory_budget_gib, "--memory-budget")
    return out


# -- expansion --------------------------------------------------------------------


def _matches(rule: Mapping[str, tuple], values: Mapping[str, Any]) -> bool:
    return all(values.get(k, C.DEFAULTS.get(k)) in accepted for k, accepted in rule.items())


def _plan(spec: SweepSpec, point: dict[str, Any], values: dict[str, Any]) -> RunPlan:
    varying = tuple(point.items())
    is_max = values.get("batch") == MAX
    concrete = dict(values, batch=spec.max_batch.start) if is_max else values
    try:
        from ovprof.runner.deepspeed_config import apply_base

        cfg = from_mapping(apply_base(concrete, source=spec.path), source=spec.path)
    except ConfigError as e:
        where = ", ".join(f"{k}={v!r}" for k, v in varying)
        hint = "; ".join(x for x in (e.hint, f"in the point {{{where}}}: fix the value or drop the point with an "
                                              "[[exclude]]" if varying else None) if x)
        raise ConfigError(e.detail, source=e.source or spec.path, key=e.key, value=e.value, hint=hint or None) from None
    return RunPlan(config=cfg, varying=varying, max_batch=spec.max_batch if is_max else None)


MAX_POINTS = 100_000  # a grid above this is refused before it is enumerated (--max-points to allow more)


def grid_size(spec: SweepSpec) -> int:
    """Points of the grid before exclusions and deduplication: product of axis and zip lengths."""
    n = 1
    for _, vals in spec.axes:
        n *= len(vals)
    for z in spec.zips:
        n *= len(z[0][1])
    return n


def expand(spec: SweepSpec, overrides: Mapping[str, Any] | None = None, max_points: int = MAX_POINTS) -> Expansion:
    """All points of the grid: axes x zips, minus exclusions, validated, deduplicated by run_id."""
    overrides = dict(overrides or {})
    size = grid_size(spec)
    if size > max_points:
        raise ConfigError(f"the grid has {size:,} points, above the limit of {max_points:,}; split the sweep, or "
                          "raise the limit with --max-points", source=spec.path, key="axes")
    groups: list[list[dict[str, Any]]] = [[{k: v} for v in vals] for k, vals in spec.axes]
    for z in spec.zips:
        n = len(z[0][1])
        groups.append([{k: vals[i] for k, vals in z} for i in range(n)])
    plans: dict[str, RunPlan] = {}
    excluded = duplicates = 0
    for combo in itertools.product(*groups):
        point: dict[str, Any] = {}
        for part in combo:
            point.update(part)
        values = {**spec.base, **point, **overrides}
        if any(_matches(rule, values) for rule in spec.excludes):
            excluded += 1
            continue
        # A command-line value replaces the grid's, so it no longer tells points apart.
        plan = _plan(spec, {k: v for k, v in point.items() if k not in overrides}, values)
        if plan.run_id in plans:
            duplicates += 1
            continue
        plans[plan.run_id] = plan
    if not plans:
        raise ConfigError(f"the [[exclude]] rules drop all {excluded} points; nothing to run", source=spec.path,
                          key="exclude")
    return Expansion(spec=spec, plans=tuple(plans.values()), excluded=excluded, duplicates=duplicates,
                     overrides=overrides)


def check_world_sizes(expansion: Expansion) -> None:
    """Each world size must fit this machine (GPUs, or CPU cores without CUDA); imports torch only for > 1.
    Each attention backend other than auto must run here, in the precisions it is swept with."""
    from ovprof.runner.devices import check_attention, check_devices

    for ws in sorted({p.config.world_size for p in expansion.plans}):
        check_devices(ws, source=expansion.spec.path)
    check_attention({(p.config.attention, p.config.precision) for p in expansion.plans}, source=expansion.spec.path)
