"""`ovprof estimate`: memory, FLOPs, time and max batch of a run without running it.

    ovprof estimate --encoder vit-l14 --objective caption --mask-ratio 0.65 --batch 64 --precision bf16 \\
        --zero 3 --world-size 32 --checkpointing --device-memory 32
    ovprof estimate --validate results/quickstart.jsonl
    ovprof estimate --paper
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ovprof.commands.common import console, fmt, gib, print_json
from ovprof.errors import UsageError

HELP = """Predict per-device memory (parameters, gradients, optimizer state, activations, caption logits, peak), FLOPs, time per step and the max batch for a device, without running anything.

Two methods: fake (executes the real model on fake tensors: exact for the model) and analytic (formulas); both add DeepSpeed's ZeRO buffers from one model (ovprof/estimate/zero.py).

Examples:

  ovprof estimate --encoder vit-l14 --batch 64 --precision bf16 --zero 3 --world-size 32 --device-memory 32

  ovprof estimate sweeps/quickstart.toml --method both

  ovprof estimate --validate results/quickstart.jsonl

  ovprof estimate --paper"""

DEVICES_GIB = {  # nominal memory of common devices, GiB
    "a100-40gb": 40, "a100-80gb": 80, "h100": 80, "h100-80gb": 80, "h200": 141, "l4": 24, "l40s": 48,
    "a10": 24, "rtx-4090": 24, "v100-16gb": 16, "v100-32gb": 32, "tpu-v4": 32,
}


def _device_bytes(device_memory: Optional[float], device: Optional[str]) -> Optional[int]:
    if device_memory is not None and device is not None:
        raise UsageError("give --device-memory or --device, not both")
    if device is not None:
        key = device.lower()
        if key not in DEVICES_GIB:
            import difflib

            near = difflib.get_close_matches(key, DEVICES_GIB, n=1)
            raise UsageError(f"--device {device!r}: unknown device" + (f" (did you mean {near[0]!r}?)" if near else
                                                                          f"; known: {', '.join(DEVICES_GIB)}"))
        return int(DEVICES_GIB[key] * 2**30)
    return None if device_memory is None else int(device_memory * 2**30)


def _row(cfg, method: str, attention: str, device_bytes: Optional[int], mfu: float, peak_tflops: Optional[float]):
    from ovprof.estimate import estimate, max_batch

    e = estimate(cfg, method, attention)
    row = {"run_id": cfg.run_id, "config": cfg.resolved().to_dict(), **e.to_dict()}
    if peak_tflops:
        row["time_per_step_ms"] = e.flops_per_step / (mfu * peak_tflops * 1e12) * 1e3
        row["time_assumption"] = f"mfu {mfu} of {peak_tflops} TFLOP/s"
    else:
        row["time_per_step_ms"] = None
        row["time_assumption"] = "give --peak-tflops (or a --device with a known peak) for a time estimate"
    if device_bytes is not None:
        b, _ = max_batch(cfg, device_bytes, method, attention)
        row["device_memory_bytes"] = device_bytes
        row["fits"] = e.peak_bytes <= device_bytes
        row["max_batch"] = b
    return row


def _configs(sweep_file: Optional[Path], values: dict):
    """The points to estimate: the command line's one, or every point of a sweep file (flags act as --set)."""
    from ovprof.config import from_mapping

    if sweep_file is None:
        return [from_mapping(values, source="command line")]
    if not sweep_file.exists():
        raise UsageError(f"{sweep_file}: no such sweep file")
    from ovprof.sweep.spec import expand, field_value, load

    overrides = {k: field_value(k, v, "command line") for k, v in values.items()}
    # a batch = "max" point is estimated at its first trial's batch; give --device-memory for its max batch
    return [plan.config for plan in expand(load(sweep_file), overrides).plans]


def validate(stores: list[Path], methods: list[str]) -> dict:
    """Estimate every ok run record and compare with its measured peak_tracked_bytes."""
    from ovprof.config import ConfigError
    from ovprof.estimate import estimate
    from ovprof.results import record

    rows = []
    for path in stores:
        if not path.exists():
            raise UsageError(f"{path}: no such store")
        for rec in record.latest(record.read_store(path).runs).values():
            measured = rec.metrics.get("peak_tracked_bytes")
            if rec.status != "ok" or not measured:
                continue
            try:
                cfg = record.run_config(rec.config)
            except ConfigError as e:  # a config today's rules refuse: not estimable, not fatal
                console(stderr=True).print(f"warning: {path}: run {rec.run_id} skipped: {e}", markup=False,
                                           highlight=False, soft_wrap=True)
                continue
            attention = "flash" if rec.env.get("cuda_available") else "native"
            row = {"run_id": rec.run_id, "store": str(path), "measured_bytes": measured,
                   "objective": cfg.objective, "zero": cfg.zero, "batch": cfg.batch, "world_size": cfg.world_size,
                   "mask_ratio": cfg.mask_ratio, "precision": cfg.precision}
            for m in methods:
                e = estimate(cfg, m, attention)
                row[f"{m}_bytes"] = e.peak_bytes
                row[f"{m}_error_pct"] = 100 * (e.peak_bytes / measured - 1)
            rows.append(row)
    summary = {}
    for m in methods:
        errs = [abs(r[f"{m}_error_pct"]) for r in rows]
        summary[m] = {"points": len(errs), "mean_abs_error_pct": sum(errs) / len(errs) if errs else None,
                      "max_abs_error_pct": max(errs) if errs else None}
    return {"rows": rows, "summary": summary}


def _quiet_fake_tensor_logs() -> None:
    """torch's fake-tensor machinery logs some unsupported operators with a traceback: a user sees none of that
    (a failure the estimate cannot survive is still one line, from the CLI's error mapping)."""
    import logging

    for name in ("torch._subclasses.fake_tensor", "torch._subclasses.fake_impls", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def estimate(
    sweep_file: Optional[Path] = typer.Argument(None, help="A sweep file: estimate each of its points."),
    objective: Optional[str] = typer.Option(None, help="caption | clip | openvision"),
    encoder: Optional[str] = typer.Option(None, help="Vision preset (see `ovprof models`)."),
    res: Optional[int] = typer.Option(None, help="Image side in pixels."),
    mask_ratio: Optional[float] = typer.Option(None, "--mask-ratio"),
    mask_position: Optional[str] = typer.Option(None, "--mask-position"),
    batch: Optional[int] = typer.Option(None, help="Micro-batch per rank."),
    zero: Optional[int] = typer.Option(None, help="ZeRO stage 0-3."),
    precision: Optional[str] = typer.Option(None, help="bf16 | fp16 | fp32"),
    world_size: Optional[int] = typer.Option(None, "--world-size", help="Ranks (no devices needed to estimate)."),
    checkpointing: Optional[bool] = typer.Option(None, "--checkpointing/--no-checkpointing",
                                                 help="Activation checkpointing on the vision encoder."),
    set_: list[str] = typer.Option([], "--set", help="Any run field, e.g. --set bucket_elems=5e7."),
    device_memory: Optional[float] = typer.Option(None, "--device-memory", metavar="GIB",
                                                  help="Device memory for fits / max batch."),
    device: Optional[str] = typer.Option(None, help=f"A known device instead: {', '.join(DEVICES_GIB)}."),
    method: str = typer.Option("fake", help="fake | analytic | both"),
    attention: Optional[str] = typer.Option(None, help="The run field attention: auto | flash | efficient | math | "
                                            "cudnn (auto is costed for a CUDA device; `native`: auto costed "
                                            "with this machine's kernels)."),
    mfu: float = typer.Option(0.4, help="Model FLOPs utilization assumed for the time estimate."),
    peak_tflops: Optional[float] = typer.Option(None, "--peak-tflops", help="Device peak TFLOP/s for the time."),
    validate_: list[Path] = typer.Option([], "--validate", help="Compare with measured records in this store."),
    paper: bool = typer.Option(False, "--paper", help="The paper's table predicted at full scale."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    if method not in ("fake", "analytic", "both"):
        raise UsageError(f"--method {method!r}: must be fake, analytic or both")
    # --attention is the run field; "native" is the one extra word: auto, costed with this machine's kernels
    auto_as = "native" if attention == "native" else "flash"
    methods = ["fake", "analytic"] if method == "both" else [method]
    import math

    for name, v, lo, hi in (("--device-memory", device_memory, 0.0, 2.0**30), ("--mfu", mfu, 0.0, 1.0),
                            ("--peak-tflops", peak_tflops, 0.0, 1e9)):
        if v is not None and not (math.isfinite(v) and lo < v <= hi):
            raise UsageError(f"{name} {v:g}: must be a finite number in ({lo:g}, {hi:g}]")
    from ovprof.paths import input_file

    for p in validate_:
        input_file(p, "--validate", missing="no such store")
    _quiet_fake_tensor_logs()
    if validate_:
        out = validate(validate_, methods)
        if json_out:
            print_json(out)
            return
        _print_validation(out)
        return
    if paper:
        from ovprof.estimate.paper import paper_table

        rows = paper_table()
        if json_out:
            print_json(rows)
            return
        _print_paper(rows)
        return
    device_bytes = _device_bytes(device_memory, device)
    if peak_tflops is None and device:
        from ovprof.measure.hardware import peak_tflops as table_peak

        peak_tflops = table_peak({"h100": "NVIDIA H100 80GB HBM3", "h100-80gb": "NVIDIA H100 80GB HBM3",
                                  "h200": "NVIDIA H200", "a100-80gb": "NVIDIA A100-SXM4-80GB",
                                  "a100-40gb": "NVIDIA A100-SXM4-40GB"}.get(device.lower(), device),
                                 "bf16")[0]
    values = {k: v for k, v in {
        "objective": objective, "encoder": encoder, "res": res, "mask_ratio": mask_ratio,
        "mask_position": mask_position, "batch": batch, "zero": zero, "precision": precision,
        "world_size": world_size, "checkpointing": checkpointing,
        "attention": None if attention in (None, "native") else attention}.items() if v is not None}
    from ovprof.config import parse_set

    values.update(parse_set(set_))
    rows = []
    for cfg in _configs(sweep_file, values):
        for m in methods:
            rows.append(_row(cfg, m, auto_as, device_bytes, mfu, peak_tflops))
    if json_out:
        print_json(rows)
        return
    _print_rows(rows)


def _print_rows(rows: list[dict]) -> None:
    from rich.table import Table

    t = Table(title="estimated per device (GiB = 2^30 bytes)")
    for col in ("point", "method", "params", "grads", "optim", "activ", "bucket", "peak", "phase",
                "TFLOP/step", "ms/step", "max batch"):
        t.add_column(col, justify="left" if col in ("point", "method", "phase") else "right")
    for r in rows:
        cfg = r["config"]
        point = (f"{cfg['objective']} {cfg['encoder']} b{cfg['batch']}x{cfg['world_size']} z{cfg['zero']} "
                 f"{cfg['precision']} m{cfg['mask_ratio']}")
        t.add_row(point, f"{r['method']}/{r['attention']}", gib(r["parameters_bytes"]), gib(r["gradients_bytes"]),
                  gib(r["optimizer_state_bytes"]), gib(r["activations_bytes"]), gib(r["bucket_bytes"]),
                  gib(r["peak_bytes"]), r["peak_phase"], f"{r['flops_per_step'] / 1e12:.3f}",
                  fmt(r.get("time_per_step_ms")), str(r.get("max_batch", "-")))
    console().print(t)


def _print_validation(out: dict) -> None:
    from rich.table import Table

    rows, methods = out["rows"], list(out["summary"])
    t = Table(title="estimate vs measured peak_tracked_bytes")
    for col in ("run_id", "point", "measured GiB", *[f"{m} err %" for m in methods]):
        t.add_column(col, justify="left" if col in ("run_id", "point") else "right")
    for r in rows:
        t.add_row(r["run_id"], f"{r['objective']} z{r['zero']} b{r['batch']}x{r['world_size']} m{r['mask_ratio']} "
                               f"{r['precision']}", gib(r["measured_bytes"]),
                  *[f"{r[f'{m}_error_pct']:+.1f}" for m in methods])
    c = console()
    c.print(t)
    for m, s in out["summary"].items():
        c.print(f"{m}: {s['points']} points, mean |error| {fmt(s['mean_abs_error_pct'], '.2f')}%, "
                f"max |error| {fmt(s['max_abs_error_pct'], '.2f')}%")


def _print_paper(rows: list[dict]) -> None:
    from rich.table import Table

    c = console()
    t = Table(title="ESTIMATED at full scale: peak memory per device (ZeRO 3 over 32 ranks, bf16, ViT checkpointing)")
    for col in ("encoder@res", "global batch", "OpenVision GiB", "OV2 GiB", "ratio x", "paper OV GB",
                "paper OV2 GB", "paper ratio x"):
        t.add_column(col, justify="left" if col == "encoder@res" else "right")
    for r in (r for r in rows if r["kind"] == "memory"):
        po, p2 = r["paper_openvision_gb"], r["paper_caption_gb"]
        t.add_row(f"{r['encoder']}@{r['res']}", str(r["global_batch"]), f"{r['est_openvision_gib']:.1f}",
                  f"{r['est_caption_gib']:.1f}", f"{r['est_memory_ratio_x']:.2f}",
                  "OOM" if po is None else str(po), str(p2), fmt(r["paper_memory_ratio_x"], ".2f"))
    c.print(t)
    t = Table(title="ESTIMATED max global batch (32 devices)")
    for col in ("encoder@res", "device GiB", "OpenVision", "OV2", "ratio x", "paper OV", "paper OV2", "paper ratio x"):
        t.add_column(col, justify="left" if col == "encoder@res" else "right")
    for r in (r for r in rows if r["kind"] == "max_batch"):
        t.add_row(f"{r['encoder']}@{r['res']}", str(r["device_gib"]), str(r["est_max_global_batch_openvision"]),
                  str(r["est_max_global_batch_caption"]), fmt(r["est_max_batch_ratio_x"], ".2f"),
                  str(r["paper_max_global_batch_openvision"]), str(r["paper_max_global_batch_caption"]),
                  f"{r['paper_max_batch_ratio_x']:.2f}")
    c.print(t)
    c.print("Estimates for PyTorch + DeepSpeed with fused attention, not TPU measurements; the paper measured "
            "JAX on TPU v4 (32 GiB per chip). Compare ratios, not absolute GB.")
