"""Max-batch search: the largest batch that runs, by doubling then bisection, each trial a normal run.

    ovprof sweep run sweeps/paper-vit-l14-224.toml      # points with batch = "max"

Growth: try start, 2 start, 4 start, ... (capped at `limit`) until the first
oom. Bisection: between the last ok (lo) and that oom (hi), try (lo + hi) // 2
until hi - lo <= granularity. A trial that ends in error or timeout stops the
search with status error: only an oom is evidence that a batch does not fit, so
an error is never read as one (a timm-style silent shrink would hide the bug).

Trial count. With F the smallest oom batch found, s = start, g = granularity:
growth tries at most ceil(log2(F / s)) + 2 batches (its oom h lies in [F, 2F)),
and bisection at most ceil(log2(F / g)) more (it halves a width below F until
<= g). So trials <= ceil(log2(F / s)) + 2 + max(0, ceil(log2(F / g))), and when
no batch up to `limit` fails, trials = ceil(log2(limit / s)) + 1. This module is
pure logic (the trial runner is passed in), so the bound is tested exhaustively.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from ovprof.sweep.spec import MaxBatchOptions

OK, OOM = "ok", "oom"


@dataclass
class Trial:
    batch: int
    status: str  # ok | oom | error | timeout
    run_id: str | None = None
    reused: bool = False  # taken from the store, not run again

    def to_dict(self) -> dict:
        return {"batch": self.batch, "run_id": self.run_id, "status": self.status, "reused": self.reused}


@dataclass
class SearchResult:
    status: str  # ok (found), oom (even `start` does not fit), error (a trial failed otherwise)
    max_batch: int | None  # largest batch that ran ok
    first_oom_batch: int | None  # smallest batch that ran out of memory; None when `limit` ran ok
    trials: list[Trial] = field(default_factory=list)
    growth_trials: int = 0
    failed: Trial | None = None  # the trial that stopped the search (status error)

    @property
    def limit_reached(self) -> bool:
        return self.status == OK and self.first_oom_batch is None


def _clog2(x: float) -> int:
    return max(0, math.ceil(math.log2(x) - 1e-12))


def trial_bound(opts: MaxBatchOptions, first_oom_batch: int | None) -> int:
    """The most trials a search can take, given the smallest oom batch it found (module docstring)."""
    s, g = opts.start, opts.granularity
    if first_oom_batch is None:
        return _clog2(opts.limit / s) + 1
    f = first_oom_batch
    return _clog2(f / s) + 2 + (_clog2(f / g) if f > g else 0)


def growth_bound(opts: MaxBatchOptions, first_oom_batch: int | None) -> int:
    """The most growth (doubling) trials: ceil(log2(F / start)) + 2."""
    if first_oom_batch is None:
        return _clog2(opts.limit / opts.start) + 1
    return _clog2(first_oom_batch / opts.start) + 2


def search(opts: MaxBatchOptions, attempt: Callable[[int], Trial], on_trial: Callable[[Trial], None] | None = None
           ) -> SearchResult:
    """Run the search; `attempt(batch)` runs (or finds in the store) one trial and returns it."""
    trials: list[Trial] = []

    def go(b: int) -> Trial:
        t = attempt(b)
        trials.append(t)
        if on_trial:
            on_trial(t)
        return t

    lo: int | None = None  # largest ok
    hi: int | None = None  # smallest oom
    b = opts.start
    while True:
        t = go(b)
        if t.status == OK:
            lo = b
        elif t.status == OOM:
            hi = b
            break
        else:
            return SearchResult("error", lo, hi, trials, len(trials), failed=t)
        if b >= opts.limit:
            break
        b = min(2 * b, opts.limit)
    growth = len(trials)
    if lo is None:
        return SearchResult(OOM, None, hi, trials, growth)
    while hi is not None and hi - lo > opts.granularity:
        mid = (lo + hi) // 2
        t = go(mid)
        if t.status == OK:
            lo = mid
        elif t.status == OOM:
            hi = mid
        else:
            return SearchResult("error", lo, hi, trials, growth, failed=t)
    return SearchResult(OK, lo, hi, trials, growth)
