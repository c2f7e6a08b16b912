"""`ovprof profile`: where one step's time and memory go, by module group, in a worker process; nothing stored.

    ovprof profile --objective caption --encoder vit-debug --trace trace.json
    ovprof profile --objective openvision --encoder vit-debug --json

The point options are `ovprof run`'s (the same declarations, read from its
signature). The worker builds the engine, runs the warm-up steps, then one step
under the tensor tracker with module scopes (memory at the tracked peak by
group and kind) and `--profile-steps` steps under torch.profiler (time by group
and phase, a Chrome trace). No step of it is timed for a record.
"""

from __future__ import annotations

import inspect
import tempfile
import typing
from pathlib import Path

import typer

from ovprof.commands import run as run_cmd
from ovprof.commands.common import console, print_json
from ovprof.errors import UsageError

HELP = """Profile one point: time per module group (vision, text, decoder, ...) and per phase (forward, backward, optimizer, DeepSpeed engine), a Chrome trace, and the tracked memory peak split by module group and kind. Same point options as `ovprof run`; nothing is appended to a store.

Examples:

  ovprof profile --objective caption --encoder vit-debug

  ovprof profile --objective openvision --encoder vit-debug --trace out/trace.json --json

Open the trace in chrome://tracing or https://ui.perfetto.dev. Exit codes: 0 ok, 1 error, 2 bad input, 3 out of memory, 4 timeout."""

COLUMNS = ("forward", "backward", "optimizer", "total")
KIND_SHORT = {"activations": "activ", "parameters": "params", "gradients": "grads", "optimizer_state": "optim",
              "temporaries": "temps", "inputs": "inputs", "other": "other"}


def _table(result: dict, trace: str | None, snapshot: str | None) -> None:
    from rich.table import Table

    c = console()
    t = result["time_ms"]
    tab = Table(title=f"time per step by module group and phase, ms (CPU wall, mean of {t['steps']} profiled steps)")
    tab.add_column("module group", no_wrap=True)
    for k in COLUMNS:
        tab.add_column(k, justify="right")
    tab.add_column("share", justify="right")
    step = t["step_ms"] or 1.0
    for g, row in t["groups"].items():
        tab.add_row(g, *(f"{row[k]:.1f}" if row[k] else "-" for k in COLUMNS), f"{100 * row['total'] / step:.1f}%")
    tab.add_row("step", *("" for _ in COLUMNS[:-1]), f"{t['step_ms']:.1f}", "100%")
    c.print(tab)
    ph = Table(title="per phase, ms (self: outside the model, autograd and the optimizer)")
    ph.add_column("phase")
    ph.add_column("total", justify="right")
    ph.add_column("self", justify="right")
    for name, row in t["phases"].items():
        ph.add_row(name, f"{row['total']:.1f}", f"{row['self']:.1f}")
    c.print(ph)
    m = result["memory_bytes"]
    kinds = sorted({k for row in m["groups"].values() for k in row if k != "total"})
    mt = Table(title="memory at the tracked peak by module group and kind, MiB")
    mt.add_column("module group", no_wrap=True)
    for k in kinds:
        mt.add_column(KIND_SHORT.get(k, k), justify="right")
    mt.add_column("total", justify="right")
    for g, row in sorted(m["groups"].items(), key=lambda kv: -kv[1]["total"]):
        mt.add_row(g, *(f"{row[k] / 2**20:.2f}" if row.get(k) else "-" for k in kinds), f"{row['total'] / 2**20:.2f}")
    c.print(mt)
    c.print(f"sum of the groups {m['sum_bytes'] / 2**20:.2f} MiB = tracked peak {m['peak_bytes'] / 2**20:.2f} MiB. "
            "activ: allocated in the group's forward; params, grads, optim: owned by its parameters; (forward), "
            "(backward), (optimizer): allocated in that phase outside every module's forward; (unowned): alive at "
            "the start, no parameter's (DeepSpeed's flat buffers). docs/profile.md has the blind spots.")
    if trace:
        c.print(f"Chrome trace: {trace}")
    if snapshot:
        c.print(f"CUDA memory snapshot: {snapshot} (https://pytorch.org/memory_viz)")


def profile(**kw) -> None:
    from ovprof.config import ExecOptions
    from ovprof.errors import STATUS_EXIT
    from ovprof.paths import output_file
    from ovprof.runner.executor import LocalExecutor, make_job

    cfg = run_cmd.config_from_options(**{k: kw[k] for k in run_cmd.POINT_OPTIONS})
    steps = kw["profile_steps"]
    if not 1 <= steps <= 20:
        raise UsageError(f"--profile-steps {steps}: must be between 1 and 20")
    run_cmd.check_timeout(kw["timeout"])
    trace = kw["trace"]
    if trace is not None:
        output_file(trace, "--trace")
    trace_path = (trace or Path(tempfile.gettempdir()) / f"ovprof-trace-{cfg.run_id}.json").resolve()
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    trace = str(trace_path)
    snapshot = kw["memory_snapshot"]
    if snapshot is not None:
        output_file(snapshot, "--memory-snapshot")
        snapshot = snapshot.resolve()
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        snapshot = str(snapshot)
    logs = Path(tempfile.gettempdir()) / "ovprof-profile-logs"
    opts = ExecOptions(store=str(logs / "unused.jsonl"), timeout_s=kw["timeout"], launcher=kw["launcher"],
                       log_dir=str(logs))
    job = make_job(cfg, opts, profile={"steps": steps, "trace": trace, "memory_snapshot": snapshot})
    warn = console(stderr=True)
    if not kw["json_out"]:
        warn.print(f"profiling {cfg.run_id} in a worker process (log {job.log_path}) ...", markup=False,
                   highlight=False)
    (res,) = list(LocalExecutor().run([job]))
    rank0 = next((r for r in res.ranks if r.get("rank") == 0), None)
    if res.timed_out or rank0 is None or rank0.get("status") != "ok" or "profile" not in rank0:
        status = "timeout" if res.timed_out else (rank0 or {}).get("status", "error")
        err = (rank0 or {}).get("error") or {}
        raise typer.Exit(_failed(status, err, job.log_path, STATUS_EXIT))
    result = rank0["profile"]
    snap = snapshot if (snapshot and Path(snapshot).exists()) else None
    if kw["json_out"]:
        print_json({"run_id": cfg.run_id, "config": cfg.resolved().to_dict(), "trace": trace,
                    "memory_snapshot": snap, **result})
    else:
        _table(result, trace, snap)
        if snapshot and not snap:
            warn.print("no CUDA memory snapshot: this worker ran on CPU", markup=False)


def _failed(status: str, err: dict, log: Path, exits: dict) -> int:
    from rich.text import Text

    c = console(stderr=True)
    msg = f"{status}: {err.get('type', '')}: {str(err.get('message', '')).splitlines()[0] if err.get('message') else ''}"
    c.print(Text.assemble(("error: ", "bold red"), msg, f" (log: {log})"), soft_wrap=True)
    return exits.get(status, 1)


def _signature() -> inspect.Signature:
    """`ovprof run`'s point options, --timeout, --launcher and --json, then this command's own."""
    hints = typing.get_type_hints(run_cmd.run)
    keep = (*run_cmd.POINT_OPTIONS, "timeout", "launcher", "json_out")
    params = [p.replace(annotation=hints[n]) for n, p in inspect.signature(run_cmd.run).parameters.items()
              if n in keep]
    own = [
        inspect.Parameter("profile_steps", inspect.Parameter.KEYWORD_ONLY, annotation=int,
                          default=typer.Option(2, "--profile-steps", help="Steps under torch.profiler (1-20).")),
        inspect.Parameter("trace", inspect.Parameter.KEYWORD_ONLY, annotation=typing.Optional[Path],
                          default=typer.Option(None, "--trace", help="Chrome trace file  \\[default: a file in "
                                               "the temporary folder, printed]")),
        inspect.Parameter("memory_snapshot", inspect.Parameter.KEYWORD_ONLY, annotation=typing.Optional[Path],
                          default=typer.Option(None, "--memory-snapshot", help="CUDA only: a torch.cuda.memory "
                                               "snapshot (pickle) of the tracked step, for pytorch.org/memory_viz.")),
    ]
    return inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params] + own)


profile.__signature__ = _signature()
profile.__annotations__ = {p.name: p.annotation for p in profile.__signature__.parameters.values()}
