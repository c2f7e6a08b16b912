"""Where a step's time and memory go, by module group: the model's top-level submodules (vision, text, decoder...).

    ovprof profile --objective caption --encoder vit-debug      # ovprof/commands/profile.py runs it in a worker

`ModuleScopes(model)` puts forward pre/post hooks on every submodule: while a
module of the top-level child `vision` (or any module below it) runs its
forward, the current group is `vision`; code of the model's own forward that
runs outside every submodule (the objective's loss, the caption head applied
through `decoder.head.weight`, token masking) is `OUTSIDE`. The group opens a
`torch.profiler.record_function("ovprof::group::<name>")` scope and tells the
tensor tracker, which attributes each tensor to the group whose forward
allocated it (activations; in backward, the recomputation of checkpointed
blocks). Parameters, their gradients and their optimizer state are attributed
to the group that owns the parameter.

`time_breakdown(events, steps)` reads the profiler's events: forward time per
group from the group scopes, backward time per group from the autograd nodes
(`autograd::engine::evaluate_function: ...`), whose sequence number names the
forward op that created them, the optimizer from torch's `Optimizer.step#...`
scope, and DeepSpeed's engine work as what each phase spends outside all of
these. Times are CPU wall time per step (on CUDA: host-side, the device work is
in the trace).

Group names come from the model, never from an objective's name. Pure torch:
no run config, no DeepSpeed.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch

OUTSIDE = "(outside modules)"  # the model's forward outside every top-level submodule: loss, head, masking
ENGINE = "(engine)"  # DeepSpeed's work outside the model and the optimizer; framework buffers in memory
from ovprof.measure.memory import UNGROUPED as UNOWNED  # noqa: E402,F401 - the memory group of no module, no parameter
PHASES = ("forward", "backward", "optimizer")
SCOPE = "ovprof::group::"
PHASE_SCOPE = "ovprof::phase::"
MODEL_SCOPE = "ovprof::model"
EVAL = "autograd::engine::evaluate_function: "
OPT_STEP = "Optimizer.step#"


def group_of_name(name: str) -> str:
    """`vision.blocks.0.attn.qkv.weight` -> `vision`; a parameter of the root module itself -> OUTSIDE."""
    return name.split(".", 1)[0] if "." in name else OUTSIDE


class ModuleScopes:
    """Hooks that name the module group running now (record_function scopes, the tracker's current group)."""

    def __init__(self, model: torch.nn.Module, *, tracker=None, record: bool = True):
        self.model, self.tracker, self.record = model, tracker, record
        self._stack: list[tuple[str, object | None]] = []
        self._handles: list = []

    @property
    def current(self) -> str | None:
        return self._stack[-1][0] if self._stack else None

    def _enter(self, group: str):
        def pre(_mod, _args):
            rf = None
            if group != self.current and self.record:
                rf = torch.profiler.record_function(group if group == MODEL_SCOPE else SCOPE + group)
                rf.__enter__()
            self._stack.append((group, rf))
            if self.tracker is not None:
                self.tracker.group = OUTSIDE if group == MODEL_SCOPE else group
        return pre

    def _exit(self, _mod, _args, _out):
        if not self._stack:
            return
        _, rf = self._stack.pop()
        if rf is not None:
            rf.__exit__(None, None, None)
        if self.tracker is not None:
            cur = self.current
            self.tracker.group = None if cur is None else (OUTSIDE if cur == MODEL_SCOPE else cur)

    def __enter__(self):
        self._handles.append(self.model.register_forward_pre_hook(self._enter(MODEL_SCOPE)))
        self._handles.append(self.model.register_forward_hook(self._exit))
        for name, mod in self.model.named_modules():
            if not name:
                continue
            self._handles.append(mod.register_forward_pre_hook(self._enter(group_of_name(name + ".x"))))
            self._handles.append(mod.register_forward_hook(self._exit))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        while self._stack:  # a forward that raised leaves scopes open
            self._exit(None, None, None)


@contextlib.contextmanager
def phase(name: str):
    with torch.profiler.record_function(PHASE_SCOPE + name):
        yield


def _ancestor(e, pred):
    p = e.cpu_parent
    while p is not None:
        if pred(p):
            return p
        p = p.cpu_parent
    return None


def time_breakdown(events, steps: int) -> dict:
    """{"groups": {group: {forward, backward, optimizer, total}}, "phases": {phase: {total, self}}}, ms per step.

    Columns are phases, rows where the time goes: each module group, `optimizer`, and ENGINE (each phase's `self`).

    A phase's `self` is its time outside every module group and the optimizer: DeepSpeed's engine work (and, in
    backward, the autograd engine's own bookkeeping between nodes)."""
    per = max(1, steps)
    us = defaultdict(float)  # (group, column) -> microseconds
    phase_total = defaultdict(float)
    seq_group: dict[int, str] = {}
    for e in events:
        name = e.name
        if name.startswith(PHASE_SCOPE):
            phase_total[name[len(PHASE_SCOPE):]] += e.cpu_time_total
        elif name == MODEL_SCOPE or name.startswith(SCOPE):
            # only in the forward phase: a checkpointed block's recomputation runs its forward hooks inside
            # backward, where its autograd node already counts it
            if _ancestor(e, lambda p: p.name == PHASE_SCOPE + "forward") is None:
                continue
            key = (OUTSIDE, "forward_model") if name == MODEL_SCOPE else (name[len(SCOPE):], "forward")
            us[key] += e.cpu_time_total
        elif name.startswith(OPT_STEP):
            us[("optimizer", "optimizer")] += e.cpu_time_total
        if e.sequence_nr is not None and e.sequence_nr >= 0 and not name.startswith(EVAL) \
                and e.sequence_nr not in seq_group:
            scope = _ancestor(e, lambda p: p.name.startswith(SCOPE) or p.name.startswith(EVAL))
            if scope is not None and scope.name.startswith(SCOPE):
                seq_group[e.sequence_nr] = scope.name[len(SCOPE):]
    for e in events:
        if e.name.startswith(EVAL) and _ancestor(e, lambda p: p.name.startswith(EVAL)) is None:
            us[(seq_group.get(e.sequence_nr, OUTSIDE), "backward")] += e.cpu_time_total
    groups: dict[str, dict] = {}
    names = sorted({g for g, _ in us if g not in ("optimizer",)} - {OUTSIDE}) + [OUTSIDE]
    fwd_in_groups = sum(v for (g, c), v in us.items() if c == "forward")
    for g in names:
        fwd = us.get((g, "forward"), 0.0)
        if g == OUTSIDE:  # the model's forward minus its groups: loss, head, masking
            fwd = max(0.0, us.get((OUTSIDE, "forward_model"), 0.0) - fwd_in_groups)
        bwd = us.get((g, "backward"), 0.0)
        groups[g] = {"forward": fwd, "backward": bwd, "optimizer": 0.0}
    opt = us.get(("optimizer", "optimizer"), 0.0)
    groups["optimizer"] = {"forward": 0.0, "backward": 0.0, "optimizer": opt}
    attributed = {
        "forward": us.get((OUTSIDE, "forward_model"), 0.0),
        "backward": sum(v for (g, c), v in us.items() if c == "backward"),
        "optimizer": opt,
    }
    phases = {}
    for ph in PHASES:
        tot = phase_total.get(ph, 0.0)
        phases[ph] = {"total": tot / 1e3 / per, "self": max(0.0, tot - attributed[ph]) / 1e3 / per}
    for g, row in groups.items():
        for k in list(row):
            row[k] = row[k] / 1e3 / per
    groups[ENGINE] = {ph: phases[ph]["self"] for ph in PHASES}  # each phase outside model, autograd, optimizer
    for row in groups.values():
        row["total"] = sum(row[k] for k in PHASES)
    step = sum(p["total"] for p in phases.values())
    return {"groups": groups, "phases": phases, "step_ms": step, "steps": steps}


def memory_breakdown(tracker) -> dict:
    """The tracked peak split by group and kind: {"groups": {group: {kind: bytes}}, "peak_bytes": ...}.

    Adds up to the tracker's peak exactly: every live tensor carries one group (UNOWNED where nothing names one)."""
    groups: dict[str, dict[str, int]] = defaultdict(dict)
    for (kind, group), b in tracker.peak_group_breakdown_bytes.items():
        if b:
            groups[group][kind] = groups[group].get(kind, 0) + b
    out = {g: dict(sorted(v.items())) for g, v in groups.items()}
    for v in out.values():
        v["total"] = sum(v.values())
    return {"groups": out, "peak_bytes": tracker.peak_bytes,
            "sum_bytes": sum(v["total"] for v in out.values())}


def param_groups(model: torch.nn.Module, optimizer=None) -> dict[str, list[torch.Tensor]]:
    """{group: [parameters, their optimizer state]} by the top-level submodule that owns each parameter."""
    out: dict[str, list[torch.Tensor]] = defaultdict(list)
    state = getattr(optimizer, "state", {}) if optimizer is not None else {}
    for name, p in model.named_parameters():
        g = group_of_name(name)
        out[g].append(p)
        if hasattr(p, "ds_tensor"):
            out[g].append(p.ds_tensor)
        if p.grad is not None:
            out[g].append(p.grad)
        for v in (state.get(p) or {}).values() if hasattr(state, "get") else ():
            if isinstance(v, torch.Tensor):
                out[g].append(v)
    return out
