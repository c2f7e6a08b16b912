"""The families table: contrastive, captioning and pixel objectives side by side at matching settings.

    ovprof sweep run sweeps/families.toml && ovprof report --sweep families   # families.csv, families.png

A group is the runs whose setting (every RunConfig field but the objective
variant, plus hardware and software) is equal once the fields an objective owns
(`own_fields` in ovprof/objectives: the pixel objectives' decoder, mask grid,
class tokens, pixel normalisation) are set aside too: those describe the
variant, like the mask ratio. A group measured in at least two families gets
one row per run, families in the registry's order (ovprof.objectives.FAMILIES).
Which family an objective belongs to is the registry's answer, never its name.
"""

from __future__ import annotations

import pandas as pd

from ovprof import objectives
from ovprof.config import DEFAULTS, ConfigError
from ovprof.report.cells import (GIB, SETTING_COLUMNS, SOURCE_NAME, Column, Context, Table, memory_sources, metric,
                                 num, setting_cells)
from ovprof.report.load import ENV_FIELDS, MEMORY_SOURCES, SETTING_FIELDS, Data, key_of

UNKNOWN = "unknown"  # an objective this version does not know (an old store): listed last


def family_of(objective: str) -> str:
    try:
        return objectives.get(objective).family
    except ConfigError:
        return UNKNOWN


def label_of(objective: str) -> str:
    try:
        return objectives.get(objective).label
    except ConfigError:
        return objective


def variant_of(run: pd.Series) -> str:
    """The run's variant, with the objective's own fields where they differ from RunConfig's defaults."""
    cfg = run["config"]
    try:
        own = objectives.get(run["objective"]).own_fields
    except ConfigError:
        own = ()
    extra = [f"{k} {cfg[k]}" for k in own if k in cfg and cfg[k] != DEFAULTS[k]]
    return ", ".join([run["variant"], *extra])


def _derived(run: pd.Series, key: str):
    d = run["derived"] if isinstance(run["derived"], dict) else {}
    return d.get(key)


def _params_m(run: pd.Series, tower: str):
    params = _derived(run, "params") or {}
    v = params.get(tower)
    return v / 1e6 if num(v) is not None else "not computable: no derived figures"


def families_table(data: Data, ctx: Context) -> Table:
    runs = data.runs
    sources = memory_sources(runs)
    owned = set(objectives.owned_fields())
    fields = [k for k in (*SETTING_FIELDS, *ENV_FIELDS) if k not in owned]
    ctx = Context(tuple(k for k in ctx.varying if k not in owned))  # the variant column shows those
    order = {f: i for i, f in enumerate((*objectives.FAMILIES, UNKNOWN))}
    rows = []
    if len(runs):
        fam = runs["objective"].map(family_of)
        groups = runs.apply(lambda r: key_of({k: r[k] for k in fields}), axis=1)
        for _, g in runs.groupby(groups, sort=False):
            if fam.loc[g.index].nunique() < 2:
                continue
            g = g.assign(_family=fam.loc[g.index].map(order),
                         _grid=g["config"].map(lambda c: c.get("mask_grid", 0)))
            for _, r in g.sort_values(["_family", "objective", "mask_ratio", "_grid"], kind="stable").iterrows():
                where = ctx.where(r)
                kept, total = _derived(r, "kept_tokens"), _derived(r, "num_patches")
                row = {**setting_cells(r, ctx), "family": family_of(r["objective"]),
                       "objective": label_of(r["objective"]), "variant": variant_of(r), "status": r["status"],
                       "step_ms_median": metric(r, "step_time_ms_median", r["objective"], where),
                       "step_ms_p10": metric(r, "step_time_ms_p10", r["objective"], where),
                       "step_ms_p90": metric(r, "step_time_ms_p90", r["objective"], where)}
                for src in sources:
                    row[f"peak_{src}_gib"] = metric(r, MEMORY_SOURCES[src], r["objective"], where, scale=GIB)
                fwd, train = _derived(r, "fwd_gflops_per_image"), _derived(r, "train_gflops_per_image")
                row.update({
                    "visual_tokens_kept": f"{kept}/{total}" if kept is not None else "-",
                    "fwd_gflops_per_image": fwd if num(fwd) is not None else "not computable",
                    "train_gflops_per_image": train if num(train) is not None else "not computable",
                    "encoder_params_m": _params_m(r, "encoder"),
                    "other_params_m": (_params_m(r, "total") - _params_m(r, "encoder")
                                       if num(_params_m(r, "total")) is not None else _params_m(r, "total")),
                    "total_params_m": _params_m(r, "total"),
                    "run_id": r["run_id"],
                })
                rows.append(row)
    cols = [*SETTING_COLUMNS, Column("family", "family"), Column("objective", "objective"),
            Column("variant", "variant"), Column("status", "status"),
            Column("step_ms_median", "step ms median [p10-p90]", "spread"),
            *[Column(f"peak_{s}_gib", f"peak {SOURCE_NAME[s]} GiB", "gib") for s in sources],
            Column("visual_tokens_kept", "visual tokens kept"),
            Column("fwd_gflops_per_image", "fwd GFLOPs/image (analytic)", "gflops"),
            Column("train_gflops_per_image", "train GFLOPs/image (analytic)", "gflops"),
            Column("encoder_params_m", "encoder params M", "num"),
            Column("other_params_m", "other towers params M", "num"),
            Column("total_params_m", "total params M", "num"), Column("run_id", "run_id")]
    notes = ["Families: contrastive (CLIP; OpenVision 1, CLIP plus a caption decoder), captioning (caption-only, "
             "OpenVision 2), pixel (MAE, Pixio: reconstruct the masked patches). Rows of one setting share "
             "encoder, resolution, batch, ranks, ZeRO stage and precision; the variant column holds what each "
             "objective sets itself (mask ratio and side; pixel decoder, mask grid, class tokens).",
             "visual tokens kept: patches the encoder sees (mae/pixio, besides their class tokens) or the caption "
             "decoder sees (caption-only, decoder-side masking). GFLOPs per image are analytic model FLOPs "
             "(ovprof/measure/flops.py); parameters are per tower, other towers = text encoder, caption or pixel "
             "decoder and heads."]
    return Table("families", "Families: contrastive, captioning and pixel objectives at matching settings",
                 pd.DataFrame(rows), cols, notes,
                 empty_reason="no setting was measured in more than one family (see sweeps/families.toml)")
