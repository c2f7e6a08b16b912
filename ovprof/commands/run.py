"""`ovprof run`: one measured training run in its own worker process, appended to a store.

    ovprof run --objective caption --encoder vit-b16 --res 224 --mask-ratio 0.67 --batch 32 \\
        --zero 2 --precision bf16 --steps 20 --warmup 5 --out results/runs.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ovprof.commands.common import console, fmt, gib, print_json
from ovprof.errors import STATUS_EXIT, UsageError

HELP = """Run one point: build the model, train it under DeepSpeed for warm-up + timed steps in a worker process, measure time and memory, append one record to the store and print a summary.

Examples:

  ovprof run --objective caption --encoder vit-debug --steps 5

  ovprof run --objective openvision --encoder vit-debug --zero 3 --world-size 2 --out X.jsonl

  ovprof run --objective caption --encoder vit-b16 --batch 64 --precision bf16 --set bucket_elems=5e7

Exit codes: 0 ok, 1 error, 2 bad input, 3 out of memory (recorded as status oom), 4 timeout."""


def load_ds_config(path: Optional[Path]) -> Optional[str]:
    if path is None:
        return None
    from ovprof.paths import input_file

    input_file(path, "--ds-config", missing="no such DeepSpeed config file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UsageError(f"--ds-config {path}: not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"--ds-config {path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--ds-config {path}: a DeepSpeed config must be a JSON object")
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def check_timeout(timeout: float, option: str = "--timeout") -> float:
    import math

    if not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"{option} {timeout:g}: must be a positive, finite number of seconds")
    return timeout


def _not_stored(e) -> int:
    """The store refused the record: say where it is kept (or print it), exit 1."""
    from rich.text import Text

    c = console(stderr=True)
    c.print(Text.assemble(("error: ", "bold red"), str(e)), soft_wrap=True)
    if e.kept_at is None:
        print_json(e.record.to_json())
    return 1


def summarize(record, store: str) -> None:
    """The run's summary: status, then each figure with its unit (ovprof/metrics.py names them)."""
    from rich.table import Table

    c = console()
    cfg, m, status = record.config, record.metrics, record.status
    head = (f"{cfg['objective']} {cfg['encoder']}@{cfg['res']} mask={cfg['mask_ratio']}({cfg['mask_position']}) "
            f"batch={cfg['batch']}x{cfg['world_size']} zero={cfg['zero']} {cfg['precision']}")
    color = {"ok": "green", "oom": "yellow"}.get(status, "red")
    c.print(f"[bold {color}]{status}[/] {head}  run_id={record.run_id}")
    if status != "ok":
        err = record.error or {}
        c.print(f"[{color}]{err.get('type', '')}: {str(err.get('message', '')).splitlines()[0][:300] if err.get('message') else ''}[/]")
        c.print(f"log: {record.log_path}  store: {store}")
        return
    t = Table(show_header=False, box=None)
    t.add_row("step_time_ms median [p10, p90]",
              f"{fmt(m.get('step_time_ms_median'))} [{fmt(m.get('step_time_ms_p10'))}, {fmt(m.get('step_time_ms_p90'))}]"
              f" over {len(m.get('step_times_ms') or [])} steps")
    t.add_row("samples_per_s", fmt(m.get("samples_per_s")))
    t.add_row("tflops_per_s (per device) / mfu", f"{fmt(m.get('tflops_per_s'), '.3f')} / {fmt(m.get('mfu'), '.3f')}")
    t.add_row("peak_tracked GiB", gib(m.get("peak_tracked_bytes")))
    bd = m.get("tracked_breakdown_bytes") or {}
    t.add_row("  by kind GiB", ", ".join(f"{k} {gib(v)}" for k, v in bd.items() if v))
    t.add_row("peak_rss GiB (worker life / timed steps)",
              f"{gib(m.get('peak_rss_bytes'))} / {gib(m.get('peak_rss_steps_bytes'))}")
    if m.get("peak_allocated_bytes") is not None:
        t.add_row("CUDA peak allocated / reserved GiB",
                  f"{gib(m.get('peak_allocated_bytes'))} / {gib(m.get('peak_reserved_bytes'))}")
        t.add_row("NVML process / device peak GiB",
                  f"{gib(m.get('nvml_process_peak_bytes'))} / {gib(m.get('nvml_device_peak_bytes'))}")
    t.add_row("startup_s / overhead_s", f"{fmt(m.get('startup_s'))} / {fmt(m.get('overhead_s'))}")
    c.print(t)
    c.print(f"record appended to {store}")


# The options that say which point runs; `ovprof profile` takes the same ones (ovprof/commands/profile.py).
POINT_OPTIONS = ("objective", "encoder", "res", "mask_ratio", "mask_position", "batch", "zero", "precision", "steps",
                 "warmup", "world_size", "checkpointing", "memory_budget", "ds_config", "ds_override", "set_")


def config_from_options(*, objective, encoder, res, mask_ratio, mask_position, batch, zero, precision, steps, warmup,
                        world_size, checkpointing, memory_budget, ds_config, ds_override, set_):
    """The RunConfig the point options name: defaults, then --ds-config's fields, then the options and --set."""
    from ovprof.config import from_mapping, parse_set

    values = {k: v for k, v in {
        "objective": objective, "encoder": encoder, "res": res, "mask_ratio": mask_ratio,
        "mask_position": mask_position, "batch": batch, "zero": zero, "precision": precision, "steps": steps,
        "warmup": warmup, "world_size": world_size, "checkpointing": checkpointing,
        "memory_budget_gib": memory_budget, "ds_config_base": load_ds_config(ds_config),
    }.items() if v is not None}
    values.update(parse_set(set_))
    from ovprof.runner.deepspeed_config import apply_base

    warn = console(stderr=True)
    values = apply_base(values, source="command line", override=ds_override,
                        warn=lambda m: warn.print(f"warning: {m}", markup=False, highlight=False, soft_wrap=True))
    return from_mapping(values, source="command line")


def run(
    objective: Optional[str] = typer.Option(None, help="caption | clip | openvision | mae | pixio  \\[default: caption]"),
    encoder: Optional[str] = typer.Option(None, help="Vision preset (see `ovprof models`)  \\[default: vit-debug]"),
    res: Optional[int] = typer.Option(None, help="Image side in pixels  \\[default: the encoder's native]"),
    mask_ratio: Optional[float] = typer.Option(None, "--mask-ratio", help="Share of visual tokens dropped, [0, 1)."),
    mask_position: Optional[str] = typer.Option(None, "--mask-position", help="decoder (OpenVision 2) | encoder (FLIP)"),
    batch: Optional[int] = typer.Option(None, help="Micro-batch per rank  \\[default: 8]"),
    zero: Optional[int] = typer.Option(None, help="DeepSpeed ZeRO stage 0-3  \\[default: 0]"),
    precision: Optional[str] = typer.Option(None, help="bf16 | fp16 | fp32  \\[default: fp32]"),
    steps: Optional[int] = typer.Option(None, help="Timed steps  \\[default: 10]"),
    warmup: Optional[int] = typer.Option(None, help="Warm-up steps before timing  \\[default: 3]"),
    world_size: Optional[int] = typer.Option(None, "--world-size", help="Ranks; > 1 starts through torchrun."),
    checkpointing: Optional[bool] = typer.Option(None, "--checkpointing/--no-checkpointing",
                                                 help="Activation checkpointing on the vision encoder (as the "
                                                      "papers); --set checkpointing_text=true adds the text towers."),
    memory_budget: Optional[float] = typer.Option(None, "--memory-budget", metavar="GIB",
                                                  help="Emulate a smaller device: CUDA memory fraction, or on CPU a "
                                                       "cap on live tensor bytes. Over it: status oom."),
    ds_config: Optional[Path] = typer.Option(None, "--ds-config", help="Base DeepSpeed JSON: sets the fields it "
                                             "speaks for (stage, precision, micro-batch, bucket) unless given here; "
                                             "the rest of it is kept."),
    ds_override: bool = typer.Option(False, "--ds-override", help="A given field that contradicts --ds-config "
                                     "wins, with a warning (default: an error naming both)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate, print the resolved config and the merged "
                                 "DeepSpeed config as JSON, run nothing."),
    set_: list[str] = typer.Option([], "--set", help="Any run field, e.g. --set bucket_elems=5e7 (repeatable)."),
    out: Path = typer.Option(Path("results/runs.jsonl"), "--out", help="JSONL store the record is appended to."),
    timeout: float = typer.Option(1800.0, help="Kill the worker after this many seconds (status timeout)."),
    launcher: str = typer.Option("torchrun", help="torchrun | deepspeed (for --world-size > 1)."),
    hostfile: Optional[Path] = typer.Option(None, help="DeepSpeed hostfile for multi-node (implies --launcher deepspeed)."),
    json_out: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    from ovprof.config import ExecOptions

    cfg = config_from_options(objective=objective, encoder=encoder, res=res, mask_ratio=mask_ratio,
                              mask_position=mask_position, batch=batch, zero=zero, precision=precision, steps=steps,
                              warmup=warmup, world_size=world_size, checkpointing=checkpointing,
                              memory_budget=memory_budget, ds_config=ds_config, ds_override=ds_override, set_=set_)
    warn = console(stderr=True)
    if launcher not in ("torchrun", "deepspeed"):
        raise UsageError(f"--launcher {launcher!r}: must be torchrun or deepspeed")
    from ovprof.paths import input_file, output_dir, output_file

    if hostfile is not None:
        input_file(hostfile, "--hostfile", missing="no such hostfile")
    check_timeout(timeout)
    output_file(out, "--out", not_same_as=tuple(p for p in (ds_config, hostfile) if p is not None))
    output_dir(out.parent / "logs", "log folder")
    if hostfile is None:
        from ovprof.runner.devices import check_attention, check_devices

        check_devices(cfg.world_size)
        check_attention({(cfg.attention, cfg.precision)})
    opts = ExecOptions(store=str(out), timeout_s=timeout, launcher=launcher,
                       hostfile=str(hostfile) if hostfile else None)
    if dry_run:
        from ovprof.runner.deepspeed_config import build

        print_json({"run_id": cfg.run_id, "config": cfg.resolved().to_dict(), "ds_config": build(cfg),
                    "store": str(out)})
        raise typer.Exit(0)
    from ovprof.results.record import RecordNotStored, recover_pending
    from ovprof.runner.launch import run_point

    for line in recover_pending(out):
        warn.print(line, markup=False, highlight=False, soft_wrap=True)
    try:
        if json_out:
            record = run_point(cfg, opts)
        else:
            warn.print(f"running {cfg.run_id} in a worker process (log under {out.parent}/logs) ...",
                       markup=False, highlight=False)
            with warn.status(f"{cfg.run_id}: starting the worker") as status:
                record = run_point(cfg, opts, on_phase=lambda p: status.update(f"{cfg.run_id}: {p}"))
    except RecordNotStored as e:
        raise typer.Exit(_not_stored(e))
    if json_out:
        print_json(record.to_json())
    else:
        summarize(record, str(out))
    raise typer.Exit(STATUS_EXIT.get(record.status, 1))
