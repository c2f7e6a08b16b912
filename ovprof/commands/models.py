"""`ovprof models`: presets with parameter counts and analytic GFLOPs per image; the registered objectives.

    ovprof models --objective caption --mask-ratio 0.65 --json
    ovprof models --objectives
"""

from __future__ import annotations

import dataclasses

import typer

from ovprof.commands.common import console, fmt, print_json

HELP = ("List model presets: vision encoders with their parameter counts (per tower and total) beside the "
        "published figure, and analytic forward / forward+backward GFLOPs per image for an objective.\n\n"
        "Example: ovprof models --objective openvision --res 224 --json\n\n"
        "--objectives lists the registered objectives instead (name, label, towers, savings-table side).")


def rows(objective: str, res: int, mask_ratio: float, mask_position: str) -> list[dict]:
    from ovprof import presets
    from ovprof.config import RunConfig
    from ovprof.measure.flops import encoder_params, map_head_params
    from ovprof.objectives import get, gflops_per_image, model_params

    out = []
    for name, e in presets.ENCODERS.items():
        cfg = RunConfig(objective=objective, encoder=name, res=res, mask_ratio=mask_ratio,
                        mask_position=mask_position).resolved()
        tower_preset = {tower: getattr(cfg, field) for tower, field in get(objective).tower_presets}
        towers = model_params(cfg)
        head = map_head_params(e.tower) if e.published_includes_head else 0
        trunk = encoder_params(name, cfg.res)
        published = e.published_params
        row = {
            "encoder": name, "width": e.tower.width, "depth": e.tower.depth, "mlp": e.tower.mlp,
            "heads": e.tower.heads, "patch": e.patch, "res": cfg.res, "tokens": cfg.num_patches,
            "encoder_params": trunk,
            "published_params": published,
            "published_includes_map_head": e.published_includes_head,
            "published_diff_pct": None if not published else 100 * ((trunk + head) / published - 1),
            "text_encoder": tower_preset.get("text_encoder"),
            "decoder": tower_preset.get("decoder"),  # a caption or a pixel decoder, as the objective builds
            "params_by_tower": towers,
            "total_params": towers["total"],
            **gflops_per_image(cfg),
        }
        out.append(row)
    return out


def objective_rows() -> list[dict]:
    from ovprof import objectives

    return objectives.describe()


def _print_objectives(rows: list[dict]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    # One cell of lines per objective rather than a column each: summaries are long and terminals narrow.
    t = Table(title="registered objectives", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), show_lines=True)
    t.add_column("objective", no_wrap=True)
    t.add_column("label, family, towers, savings-table side, summary")
    for r in rows:
        cell = Text.assemble((r["label"], "bold"), "\n", f"family: {r['family']}; "
                             f"towers: {' + '.join(r['towers'])}; savings side: {r['savings_side'] or '-'}", "\n",
                             r["summary"])
        t.add_row(r["name"], cell)
    console().print(t)


def models(
    objective: str = typer.Option("caption", help="A registered objective (see --objectives): "
                                                  "caption | clip | openvision | mae | pixio."),
    res: int = typer.Option(0, help="Image side in pixels; 0 = each preset's native resolution."),
    mask_ratio: float = typer.Option(0.0, help="Share of visual tokens dropped (OpenVision 2 keeps ~35%: 0.65)."),
    mask_position: str = typer.Option("decoder", help="decoder (OpenVision 2) | encoder (FLIP)"),
    json_out: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    list_objectives: bool = typer.Option(False, "--objectives", help="List the registered objectives and exit."),
) -> None:
    from ovprof import presets

    if list_objectives:
        o = objective_rows()
        print_json({"objectives": o}) if json_out else _print_objectives(o)
        return

    r = rows(objective, res, mask_ratio, mask_position)
    if json_out:
        print_json({
            "objective": objective, "mask_ratio": mask_ratio, "mask_position": mask_position,
            "encoders": r,
            "text_encoders": {k: dataclasses.asdict(v) for k, v in presets.TEXT_ENCODERS.items()},
            "decoders": {k: dataclasses.asdict(v) for k, v in presets.DECODERS.items()},
            "pixel_decoders": {k: dataclasses.asdict(v) for k, v in presets.PIXEL_DECODERS.items()},
        })
        return
    from rich.table import Table

    from rich import box

    t = Table(title=f"objective={objective}, mask_ratio={mask_ratio} ({mask_position})", box=box.SIMPLE_HEAD, collapse_padding=True,
              pad_edge=False, padding=(0, 1))
    for col in ("encoder", "WxD", "p@res", "enc M", "pub M", "diff%", "total M", "fwd GF", "f+b GF"):
        t.add_column(col, justify="left" if col == "encoder" else "right", no_wrap=True)
    for x in r:
        pub = x["published_params"]
        t.add_row(
            x["encoder"], f"{x['width']}x{x['depth']}", f"{x['patch']}@{x['res']}",
            f"{x['encoder_params'] / 1e6:.1f}",
            "-" if not pub else f"{pub / 1e6:.1f}" + ("*" if x["published_includes_map_head"] else ""),
            fmt(x["published_diff_pct"], "+.2f"),
            f"{x['total_params'] / 1e6:.1f}", f"{x['fwd_gflops_per_image']:.1f}",
            f"{x['train_gflops_per_image']:.1f}",
        )
    c = console()
    c.print(t)
    towers = sorted({" + ".join(filter(None, [x["text_encoder"], x["decoder"]])) for x in r})
    c.print(f"other towers (auto-paired): {', '.join(towers)}; sizes in --json")
    c.print("* published figure includes a MAP pooling head: diff % compares encoder + that head.")
    c.print("enc/pub/total M: millions of parameters. GF: GFLOPs per image (matmul model FLOPs, "
            "backward = 2x forward; ovprof/measure/flops.py).")
