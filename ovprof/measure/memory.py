"""Exact, repeatable peak of live tensor bytes (`peak_tracked_bytes`), and the OS/allocator peaks.

    with TensorTracker(budget_bytes=None) as tr:  # see ovprof/runner/worker.py
        tr.adopt_existing(parameters=..., gradients=..., optimizer_state=..., inputs=...)
        with tr.phase("forward"): loss = model(**batch)
        ...
    tr.peak_bytes, tr.peak_breakdown_bytes

Why our own tracker rather than the allocator: on CPU there is no caching
allocator to ask, and RSS depends on glibc's arenas and page reuse, so it is
neither exact nor repeatable. This tracker sees every tensor an operator
creates (a TorchDispatchMode), keys it by its storage (views share one), and
drops it when the storage is freed (a weakref callback on the storage, which
PyTorch keeps alive exactly as long as the C++ storage). Tensors alive before
tracking starts are found once through the garbage collector and classified
by identity. The sum of live storage bytes is the same for the same program
on the same software, run after run, on CPU and CUDA alike.

Categories: parameters, gradients, optimizer_state (fp32 master weights and
Adam moments), inputs (the synthetic batch), other (framework buffers found
alive, e.g. DeepSpeed's flat buffers and gradient buckets), activations
(allocated in the forward phase) and temporaries (allocated in backward or the
optimizer step and not a parameter's gradient). A gradient is moved from
temporaries to gradients the moment autograd accumulates it into `.grad`.

Known blind spot: a tensor alive at the start but held only by C++ (no Python
object) is not counted until it is freed. Between steps there are none in the
training loops ovprof runs.
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from typing import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CATEGORIES = ("parameters", "gradients", "optimizer_state", "inputs", "other", "activations", "temporaries")
BUDGET_MESSAGE = "ovprof memory budget exceeded"
PHASE_GROUPS = ("forward", "backward", "optimizer")  # outside every module: the group is "(<phase>)"
UNGROUPED = "(unowned)"  # module group of a tensor no module's forward allocated and no parameter owns


class BudgetExceeded(MemoryError):
    """Raised inside an operator when live tensor bytes pass --memory-budget (CPU emulation of a smaller device)."""


def _storage(t: torch.Tensor):
    if not isinstance(t, torch.Tensor) or t.device.type == "meta" or t.is_sparse:
        return None
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # e.g. tensor subclasses without storage
        return None


class TensorTracker(TorchDispatchMode):
    def __init__(self, budget_bytes: int | None = None):
        super().__init__()
        self.budget_bytes = budget_bytes
        self._live: dict[int, tuple[weakref.ref, int, str]] = {}  # id(storage) -> (ref, nbytes, category)
        # Module groups (ovprof/measure/profile.py): `group` is the one running now, set by its hooks; every
        # live storage has one (UNGROUPED unless named), so the (kind, group) split sums to live_bytes.
        self.group: str | None = None
        self._group_of: dict[int, str] = {}
        self.by_group: dict[tuple[str, str], int] = {}
        self.peak_group_breakdown_bytes: dict[tuple[str, str], int] = {}
        self.by_category: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
        self.live_bytes = 0
        self.peak_bytes = 0
        self.peak_breakdown_bytes: dict[str, int] = dict(self.by_category)
        self._phase = "other"
        self.phase_peak_bytes: dict[str, int] = {}  # highest live bytes seen inside each phase
        self.start_bytes = 0  # live bytes when the peak was last reset (the resident state)
        self.start_breakdown_bytes: dict[str, int] = dict(self.by_category)
        self._hooks: list = []

    # -- bookkeeping ----------------------------------------------------------------
    def _on_free(self, key: int, _ref=None) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            _, nbytes, cat = entry
            self.live_bytes -= nbytes
            self.by_category[cat] -= nbytes
            g = self._group_of.pop(key, UNGROUPED)
            self.by_group[(cat, g)] -= nbytes

    def _add(self, st, category: str, group: str | None = None) -> None:
        key = id(st)
        if key in self._live:
            return
        nbytes = st.nbytes()
        ref = weakref.ref(st, lambda r, k=key: self._on_free(k))
        self._live[key] = (ref, nbytes, category)
        self.live_bytes += nbytes
        self.by_category[category] += nbytes
        g = group or self.group or (f"({self._phase})" if self._phase in PHASE_GROUPS else UNGROUPED)
        self._group_of[key] = g
        self.by_group[(category, g)] = self.by_group.get((category, g), 0) + nbytes
        if self.live_bytes > self.peak_bytes:
            self._new_peak()
        if self.live_bytes > self.phase_peak_bytes.get(self._phase, 0):
            self.phase_peak_bytes[self._phase] = self.live_bytes
        if self.budget_bytes is not None and self.live_bytes > self.budget_bytes:
            raise BudgetExceeded(
                f"{BUDGET_MESSAGE}: {self.live_bytes / 2**20:.2f} MiB live > budget {self.budget_bytes / 2**20:.2f} MiB")

    def _resync(self, st) -> None:
        """A storage resized in place (resize_, set_): account for its new size."""
        entry = self._live.get(id(st))
        if entry is None:
            return
        ref, old, cat = entry
        new = st.nbytes()
        if new != old:
            self._live[id(st)] = (ref, new, cat)
            self.live_bytes += new - old
            self.by_category[cat] += new - old
            g = self._group_of.get(id(st), UNGROUPED)
            self.by_group[(cat, g)] = self.by_group.get((cat, g), 0) + new - old
            if self.live_bytes > self.peak_bytes:
                self._new_peak()

    def _new_peak(self) -> None:
        self.peak_bytes = self.live_bytes
        self.peak_breakdown_bytes = dict(self.by_category)
        self.peak_group_breakdown_bytes = dict(self.by_group)

    def reclassify(self, tensors: Iterable[torch.Tensor], category: str | None, group: str | None = None) -> None:
        """Move tensors to another kind (None: keep theirs) and, if given, another module group."""
        for t in tensors:
            st = _storage(t)
            if st is None:
                continue
            key = id(st)
            entry = self._live.get(key)
            if entry is None:
                if category is not None:
                    self._add(st, category, group)
                continue
            ref, nbytes, old = entry
            new = old if category is None else category
            g_old = self._group_of.get(key, UNGROUPED)
            g_new = group or g_old
            if new == old and g_new == g_old:
                continue
            self._live[key] = (ref, nbytes, new)
            self._group_of[key] = g_new
            self.by_category[old] -= nbytes
            self.by_category[new] += nbytes
            self.by_group[(old, g_old)] -= nbytes
            self.by_group[(new, g_new)] = self.by_group.get((new, g_new), 0) + nbytes

    # -- dispatch -----------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__
        if name.startswith(("resize_", "set_")):
            for t in tree_flatten((args, out))[0]:
                st = _storage(t)
                if st is not None:
                    self._resync(st)
        category = {"forward": "activations"}.get(self._phase, "temporaries")
        for t in tree_flatten(out)[0]:
            st = _storage(t)
            if st is not None and st.nbytes() > 0:
                self._add(st, category)
        return out

    # -- public API ---------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str):
        """forward | backward | optimizer: decides the category of what is allocated inside."""
        prev, self._phase = self._phase, name
        self.phase_peak_bytes[name] = max(self.phase_peak_bytes.get(name, 0), self.live_bytes)
        try:
            yield
        finally:
            self._phase = prev

    def adopt_existing(self, *, parameters=(), gradients=(), optimizer_state=(), inputs=()) -> None:
        """Register every tensor alive now, classified by the groups given; the rest is `other`."""
        # First claim wins: a module parameter that is also an optimizer's param (fp32, no
        # master copy) stays a parameter.
        for cat, group in (("parameters", parameters), ("gradients", gradients),
                           ("optimizer_state", optimizer_state), ("inputs", inputs)):
            for t in group:
                st = _storage(t) if isinstance(t, torch.Tensor) else None
                if st is not None and st.nbytes() > 0:
                    self._add(st, cat)
        gc.collect()
        for obj in gc.get_objects():
            # type(), not isinstance(): isinstance reads __class__, which wakes lazy/deprecated proxies
            if issubclass(type(obj), torch.Tensor):
                st = _storage(obj)
                if st is not None and st.nbytes() > 0:
                    self._add(st, "other")

    def watch_gradients(self, params: Iterable[torch.Tensor], groups: dict[int, str] | None = None) -> None:
        """Move a parameter's .grad to `gradients` (and to its group: id(param) -> group) when autograd
        accumulates it."""
        groups = groups or {}
        for p in params:
            if p.requires_grad and hasattr(p, "register_post_accumulate_grad_hook"):
                self._hooks.append(p.register_post_accumulate_grad_hook(
                    lambda q, g=groups.get(id(p)): q.grad is not None and self.reclassify([q.grad], "gradients", g)))

    def reset_peak(self) -> None:
        self.peak_bytes = self.live_bytes
        self.peak_breakdown_bytes = dict(self.by_category)
        self.peak_group_breakdown_bytes = dict(self.by_group)
        self.phase_peak_bytes = {}
        self.start_bytes = self.live_bytes
        self.start_breakdown_bytes = dict(self.by_category)

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        return super().__exit__(*exc)


def optimizer_tensors(opt) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(optimizer state incl. master weights, their gradients) of a torch optimizer, if any."""
    state, grads = [], []
    if opt is None or not hasattr(opt, "param_groups"):
        return state, grads
    for group in opt.param_groups:
        for p in group["params"]:
            state.append(p)
            if p.grad is not None:
                grads.append(p.grad)
    for s in getattr(opt, "state", {}).values():
        state.extend(v for v in s.values() if isinstance(v, torch.Tensor))
    return state, grads


def adopt_training_state(tr: "TensorTracker", model, optimizer, batch: dict) -> tuple[list, object]:
    """Classify what a training step finds alive: parameters (and ZeRO-3's partitions), gradients, the optimizer's
    state and master weights, the inputs. `optimizer` may be DeepSpeed's wrapper (its inner torch optimizer is
    read). Returns (parameters, the inner optimizer), for the callers that classify further."""
    params = list(model.parameters())
    inner = getattr(optimizer, "optimizer", optimizer)
    opt_state, opt_grads = optimizer_tensors(inner)
    ds_parts = [p.ds_tensor for p in params if hasattr(p, "ds_tensor")]
    grads = [p.grad for p in params if p.grad is not None] + opt_grads
    tr.adopt_existing(parameters=params + ds_parts, gradients=grads, optimizer_state=opt_state,
                      inputs=list(batch.values()))
    return params, inner


# ---- process-level figures --------------------------------------------------------------
def peak_rss_bytes_self() -> int:
    """Peak resident set of this process, from the kernel's own accounting (ru_maxrss, KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cuda_memory_metrics(device) -> dict:
    s = torch.cuda.memory_stats(device)
    return {
        "peak_allocated_bytes": int(s.get("allocated_bytes.all.peak", 0)),
        "peak_reserved_bytes": int(s.get("reserved_bytes.all.peak", 0)),
        "alloc_retries": int(s.get("num_alloc_retries", 0)),
        "oom_count": int(s.get("num_ooms", 0)),
    }
