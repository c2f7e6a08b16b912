"""`ovprof sweep plan|run`: grids of points from a TOML file, each in its own worker, resumable.

    ovprof sweep plan sweeps/quickstart.toml
    ovprof sweep run sweeps/quickstart.toml --set steps=5 --store results/qs.jsonl

Only typer is imported at module level: `ovprof --help` must not load torch,
deepspeed or pandas. docs/sweeps.md describes the sweep file format.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from ovprof.errors import UsageError

HELP = """Grids of runs over mask ratio, batch size, ZeRO stage, ... from a sweep file (TOML, see sweeps/ and docs/sweeps.md).

  ovprof sweep plan sweeps/quickstart.toml

  ovprof sweep run sweeps/quickstart.toml"""

PLAN_HELP = """Expand a sweep file into its points and print them (count, a table of the fields that vary, run_id, and what the store already holds), without running anything.

Precedence per point: RunConfig defaults, then the file's base table, then its axes and zips, then --set and --memory-budget.

  ovprof sweep plan sweeps/quickstart.toml --set steps=5 --json

Exit codes: 0 ok, 2 bad input (one line naming the file, the key and the value)."""

RUN_HELP = """Run every point of a sweep file, each in its own worker process with a per-point timeout, appending one record per point to the store (default results/NAME.jsonl).

A failed point is a row in the store and the sweep goes on. A re-run skips points that already have an ok or oom record (--rerun runs them again), so a sweep stopped at any moment (Ctrl-C, kill -9 of this process or of a worker) resumes with the same command and repeats nothing it finished. Points with batch = "max" search the largest batch that runs (doubling, then bisection; each trial a normal record) and append a max_batch summary record.

  ovprof sweep run sweeps/quickstart.toml

  ovprof sweep run sweeps/ci-memory.toml --store results/ci.jsonl --timeout 120

  ovprof sweep run sweeps/mask-ratio.toml --set encoder=vit-b16 --set precision=bf16

Exit codes: 0 every point ok or oom (an oom is a finding, not a failure); 1 some point ended in error or timeout; 2 bad input (nothing was run); 130 interrupted by Ctrl-C (143 by SIGTERM): finished records are kept, run the same command to resume."""

app = typer.Typer(name="sweep", help=HELP, no_args_is_help=True, add_completion=False)

FILE_ARG = typer.Argument(..., metavar="FILE", help="Sweep file (TOML), e.g. sweeps/quickstart.toml.",
                          show_default=False)
SET_OPT = typer.Option([], "--set", help="Any run field for every point, e.g. --set steps=5 (repeatable; "
                                         "wins over the file). --set batch=max searches the largest batch.")
MAX_POINTS_OPT = typer.Option(None, "--max-points", metavar="N", help="Allow a grid above 100,000 points "
                              "(it is counted before it is enumerated).")
BUDGET_OPT = typer.Option(None, "--memory-budget", metavar="GIB",
                          help="Emulate a smaller device for every point (CUDA memory fraction, or on CPU a cap on "
                               "live tensor bytes); over it a point is status oom.")


def _expand(file: Path, set_: list[str], memory_budget: Optional[float], max_points: Optional[int] = None):
    from ovprof.sweep import spec as S

    if max_points is not None and max_points < 1:
        raise UsageError(f"--max-points {max_points}: must be a positive number of points")
    sweep = S.load(file)
    return S.expand(sweep, S.overrides_from_cli(set_, memory_budget), max_points or S.MAX_POINTS)


def _store_status(index, plan) -> str:
    if plan.is_max_batch:
        rec = index.max_summaries.get(plan.run_id)
        if rec is None:
            return "-"
        return f"max {rec.max_batch}" if rec.status == "ok" else rec.status
    rec = index.done.get(plan.run_id) or index.latest.get(plan.run_id)
    return rec.status if rec else "-"


@app.command("plan", help=PLAN_HELP)
def plan(
    file: Path = FILE_ARG,
    set_: list[str] = SET_OPT,
    memory_budget: Optional[float] = BUDGET_OPT,
    store_path: Optional[Path] = typer.Option(None, "--store", help="Store whose records the 'in store' column "
                                                                    "shows  \\[default: the file's store]"),
    max_points: Optional[int] = MAX_POINTS_OPT,
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list of {run_id, config, varying, max_batch, "
                                  "ds_config} (ds_config: the merged DeepSpeed config the point runs with)."),
) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ovprof.commands.common import console, print_json
    from ovprof.sweep.execute import StoreIndex

    exp = _expand(file, set_, memory_budget, max_points)
    if json_out:
        from ovprof.runner.deepspeed_config import build

        print_json([{"run_id": p.run_id, "config": p.record_config(), "varying": dict(p.varying),
                     "max_batch": p.max_batch.to_dict() if p.max_batch else None, "ds_config": build(p.config)}
                    for p in exp.plans])
        return
    spec = exp.spec
    from ovprof.paths import output_file

    store = str(output_file(store_path or spec.store, "--store" if store_path else f"{file}: store",
                            not_same_as=(file,)))
    index = StoreIndex(store)
    c = console()
    head = f"[bold]{escape(spec.name)}[/]: {len(exp.plans)} points"
    if exp.excluded:
        head += f", {exp.excluded} excluded"
    if exp.duplicates:
        head += f", {exp.duplicates} duplicates (run once)"
    c.print(head + f"  store: {escape(store)}")
    if spec.description:
        c.print(escape(spec.description))
    if exp.fixed:
        c.print("fixed: " + escape(" ".join(f"{k}={v}" for k, v in exp.fixed.items())))
    cols = exp.columns
    t = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    t.add_column("#", justify="right")
    for k in cols:
        t.add_column(k)
    t.add_column("run_id")
    t.add_column("in store")
    for i, p in enumerate(exp.plans, 1):
        v = dict(p.varying)
        t.add_row(str(i), *(escape(str(v.get(k, ""))) for k in cols), p.run_id, _store_status(index, p))
    c.print(t)
    if any(p.is_max_batch for p in exp.plans):
        mb = spec.max_batch
        c.print(f'batch = "max": search from {mb.start}, doubling, then bisection to within {mb.granularity}, '
                f"never above {mb.limit}")


def _warn_busy_machine(err) -> None:
    """Step times swing 10-250x when other work competes for the cores (seen here): say so once, up front."""
    import os

    try:
        load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return
    if load > cores:
        err.print(f"warning: the machine is busy (1-minute load {load:.1f} on {cores} cores): step times will "
                  "swing; memory figures stay exact. Time on a quiet machine, as ratios within one sweep.",
                  markup=False, highlight=False, soft_wrap=True)


def _warn_max_batch_without_budget(exp, err) -> None:
    """On a machine without CUDA and no memory budget, only the OS stops a growing batch (status error)."""
    if not any(p.is_max_batch and p.config.memory_budget_gib is None for p in exp.plans):
        return
    import torch

    if not torch.cuda.is_available():
        err.print('[yellow]warning:[/] batch = "max" without memory_budget_gib on a machine without CUDA: the search '
                  "grows until the \\[max_batch] limit or until the OS kills a worker (status error); set "
                  "--memory-budget GIB", highlight=False)


@app.command("run", help=RUN_HELP)
def run(
    file: Path = FILE_ARG,
    set_: list[str] = SET_OPT,
    store_path: Optional[Path] = typer.Option(None, "--store", help="JSONL store  \\[default: the file's store, "
                                                                    "else results/NAME.jsonl]"),
    rerun: bool = typer.Option(False, "--rerun", help="Run points again even if the store has them ok or oom."),
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="S",
                                            help="Per-point (per-trial) limit in seconds  \\[default: the "
                                                 "file's timeout_s, else 1800]"),
    memory_budget: Optional[float] = BUDGET_OPT,
    launcher: str = typer.Option("torchrun", help="torchrun | deepspeed, for points with world_size > 1."),
    hostfile: Optional[Path] = typer.Option(None, help="DeepSpeed hostfile: run multi-node points across its hosts "
                                                       "(implies --launcher deepspeed; see docs/sweeps.md)."),
    max_points: Optional[int] = MAX_POINTS_OPT,
    slots: Optional[int] = typer.Option(None, "--slots", metavar="N", help="Run up to N points at once, each on "
                                        "its own devices: disjoint GPUs, or disjoint CPU cores with a matching "
                                        "thread count  \\[default: the file's \\[executor] slots, else 1]"),
    executor: Optional[str] = typer.Option(None, "--executor", metavar="local|submitit",
                                           help="local: this machine (default); submitit: each point a cluster job "
                                                "(docs/scale.md)  \\[default: the file's \\[executor] executor]"),
    cluster: Optional[str] = typer.Option(None, "--cluster", metavar="local|slurm|auto",
                                          help="submitit: slurm, or local (submitit's executor on this machine); auto: "
                                               "slurm where sbatch and srun are on PATH"),
    partition: Optional[str] = typer.Option(None, "--partition", help="submitit/Slurm: the partition."),
    nodes: Optional[int] = typer.Option(None, "--nodes", metavar="N", help="submitit: nodes per point  \\[default: "
                                        "ceil(world_size / gpus per node), 1 without GPUs]"),
    gpus_per_node: Optional[int] = typer.Option(None, "--gpus-per-node", metavar="G",
                                                help="submitit: GPUs each job asks per node."),
    time_min: Optional[int] = typer.Option(None, "--time", metavar="MIN", help="submitit: job time limit in minutes "
                                           " \\[default: the point's timeout (x max-batch trials) + 5]"),
    account: Optional[str] = typer.Option(None, "--account", help="submitit/Slurm: the account charged."),
    sbatch: list[str] = typer.Option([], "--sbatch", metavar="KEY=VALUE",
                                     help="submitit/Slurm: any other sbatch option, e.g. --sbatch qos=high --sbatch "
                                          "exclusive (repeatable)."),
    submitit_folder: Optional[Path] = typer.Option(None, "--submitit-folder", metavar="DIR",
                                                   help="submitit: job logs and pickles, on a filesystem the nodes "
                                                        "share  \\[default: STORE.submitit/ beside the store]"),
    max_jobs: Optional[int] = typer.Option(None, "--max-jobs", metavar="N",
                                           help="submitit: jobs pending or running at once (Slurm: the array's %N) "
                                                " \\[default: 1 on the local cluster, 256 on Slurm]"),
) -> None:
    from rich.text import Text

    from ovprof.commands.common import console
    from ovprof.config import ExecOptions
    from ovprof.sweep.execute import run_sweep
    from ovprof.sweep.spec import check_world_sizes

    from ovprof.commands.run import check_timeout
    from ovprof.paths import input_file, output_dir, output_file

    exp = _expand(file, set_, memory_budget, max_points)
    from ovprof.runner import cluster as CL

    copts = CL.resolve(exp.spec.executor, f"{file} [executor]",
                       {"executor": executor, "cluster": cluster, "partition": partition, "nodes": nodes,
                        "gpus_per_node": gpus_per_node, "time": time_min, "account": account,
                        "sbatch": CL.sbatch_from_cli(sbatch),
                        "submitit_folder": str(submitit_folder) if submitit_folder is not None else None,
                        "max_jobs": max_jobs})
    if copts.submitit:
        CL.require_submitit()
    if launcher not in ("torchrun", "deepspeed"):
        raise UsageError(f"--launcher {launcher!r}: must be torchrun or deepspeed")
    if hostfile is not None:
        input_file(hostfile, "--hostfile", missing="no such hostfile")
    if timeout is not None:
        check_timeout(timeout)
    store = store_path or Path(exp.spec.store)
    output_file(store, "--store" if store_path else f"{file}: store", not_same_as=(file,))
    output_dir(store.parent / "logs", "log folder")
    if copts.submitit:
        output_dir(copts.folder(store), "--submitit-folder" if submitit_folder else "submitit folder")
    if hostfile is None and not copts.submitit:  # a submitit point's devices are the job's, not this machine's
        check_world_sizes(exp)
    spec = exp.spec
    opts = ExecOptions(store=str(store_path or spec.store), timeout_s=timeout or spec.timeout_s, launcher=launcher,
                       hostfile=str(hostfile) if hostfile else None)
    err = console(stderr=True)
    err.print(f"sweep {spec.name}: {len(exp.plans)} points, store {opts.store}, timeout {opts.timeout_s:g} s "
              "per point", highlight=False, markup=False, soft_wrap=True)
    _warn_max_batch_without_budget(exp, err)
    _warn_busy_machine(err)
    n_slots = slots if slots is not None else spec.slots
    if n_slots < 1:
        raise UsageError(f"--slots {n_slots}: must be at least 1")
    if copts.submitit:
        if n_slots > 1:
            raise UsageError(f"--slots {n_slots} is for the local executor; under submitit, --max-jobs N runs up to "
                             "N jobs at once")
        from ovprof.sweep.submit import check_plans, run_sweep_submitit

        check_plans(exp, copts, opts)  # refuse before anything is submitted
        outcome = run_sweep_submitit(exp, opts, copts, rerun=rerun, reporter=None)
    else:
        if n_slots > 1:
            from ovprof.runner.slots import make_slots

            make_slots(n_slots, max(p.config.world_size for p in exp.plans))  # refuse before anything runs
        outcome = run_sweep(exp, opts, rerun=rerun, reporter=None, slots=n_slots)
    render_summary(outcome)
    resume = "ovprof " + shlex.join(a for a in sys.argv[1:] if a != "--rerun")
    if outcome.store_error:
        err.print(Text.assemble(("error: ", "bold red"), outcome.store_error), soft_wrap=True)
        err.print(f"the sweep stopped: {outcome.done_total} of {len(exp.plans)} points done. Free space, then "
                  "resume with:", highlight=False, markup=False)
        err.print(f"  {resume}", highlight=False, markup=False, soft_wrap=True)
    if outcome.interrupted:
        err.print(f"[bold yellow]interrupted[/] ({outcome.interrupted}): {outcome.done_total} of "
                  f"{len(exp.plans)} points done ({sum(o.status in ('ok', 'oom') for o in outcome.ran)} in this "
                  f"run); every finished record is in {opts.store}. Resume with:", highlight=False)
        err.print(f"  {resume}", highlight=False, markup=False, soft_wrap=True)
    if outcome.left_running:
        err.print(f"{len(outcome.left_running)} submitted job(s) keep running and record their points: "
                  f"{', '.join(outcome.left_running)}. The same command re-attaches to them (scancel stops them).",
                  highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(outcome.exit_code)


def render_summary(outcome) -> None:
    """The closing table: counts by status, skipped, fastest and leanest ok points, max batches, failures."""
    from collections import Counter

    from rich.markup import escape
    from rich.table import Table

    from ovprof.commands.common import console, gib

    c = console()
    exp, index = outcome.expansion, outcome.index
    counts = outcome.counts
    t = Table(title=f"sweep {escape(exp.spec.name)}: {len(exp.plans)} points in {outcome.wall_s:.0f} s",
              show_header=False, box=None, title_justify="left", pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    ran = "  ".join(f"{s} {counts.get(s, 0)}" for s in ("ok", "oom", "error", "timeout"))
    t.add_row("ran this time", f"{len(outcome.ran)}: {ran}")
    t.add_row("skipped (done)", str(outcome.skipped))
    per_slot = Counter(o.slot for o in outcome.ran if o.slot is not None)
    if per_slot:
        t.add_row("per slot", "  ".join(f"slot {k}: {v}" for k, v in sorted(per_slot.items())))
    if outcome.interrupted:
        t.add_row("not run", f"{len(exp.plans) - len(outcome.outcomes)} (interrupted)")
    oks = []
    for p in exp.plans:
        rec = None if p.is_max_batch else index.latest.get(p.run_id)
        if rec and rec.status == "ok":
            oks.append((p, rec.metrics))
    timed = [(p, m) for p, m in oks if m.get("step_time_ms_median") is not None]
    if timed:
        p, m = min(timed, key=lambda x: x[1]["step_time_ms_median"])
        t.add_row("fastest", f"{m['step_time_ms_median']:.1f} ms/step  {escape(p.label())}  ({p.run_id})")
    lean = [(p, m) for p, m in oks if m.get("peak_tracked_bytes") is not None]
    if lean:
        p, m = min(lean, key=lambda x: x[1]["peak_tracked_bytes"])
        t.add_row("leanest", f"{gib(m['peak_tracked_bytes'])} GiB tracked peak  {escape(p.label())}  ({p.run_id})")
    for p in exp.plans:
        rec = index.max_summaries.get(p.run_id) if p.is_max_batch else None
        if rec is None:
            continue
        if rec.status == "ok":
            oom = rec.first_oom_batch
            val = (f"{rec.max_batch} (first oom {oom}" if oom is not None
                   else f">= {rec.max_batch} (no oom up to the limit") + f", {rec.trial_count} trials)"
        else:
            val = rec.status
        t.add_row("max batch", f"{val}  {escape(p.label())}")
    for o in outcome.failed[:10]:
        err = (o.record.error if o.record is not None else None) or {}
        msg = str(err.get("message") or "").strip().splitlines()
        log = getattr(o.record, "log_path", None) or err.get("log_path")
        t.add_row(o.status, escape(f"{o.plan.label()}: {err.get('type', '')}: {msg[0][:160] if msg else ''}  "
                                   f"log: {log}"))
    if len(outcome.failed) > 10:
        t.add_row("", f"... and {len(outcome.failed) - 10} more failed points")
    t.add_row("store", escape(outcome.store))
    c.print(t)
