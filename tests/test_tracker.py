"""The tensor tracker counts live storage bytes exactly."""

from __future__ import annotations

import pytest
import torch

from ovprof.measure.memory import BudgetExceeded, TensorTracker


def test_counts_new_storages_once_and_frees_them():
    with TensorTracker() as tr:
        a = torch.empty(1000, dtype=torch.float32)  # 4000 B
        v = a[10:20].view(2, 5)  # a view: no new bytes
        b = a * 2  # 4000 B
        assert tr.live_bytes == 8000
        del b
        assert tr.live_bytes == 4000
        c = torch.empty(250, dtype=torch.float64)  # 2000 B
        del v, a, c
    assert tr.peak_bytes == 8000
    assert tr.live_bytes == 0


def test_existing_tensors_are_adopted_by_category_and_phases_label_new_ones():
    w = torch.nn.Parameter(torch.randn(64, 64))
    x = torch.randn(8, 64)
    with TensorTracker() as tr:
        tr.adopt_existing(parameters=[w], inputs=[x])
        tr.reset_peak()
        tr.watch_gradients([w])
        with tr.phase("forward"):
            y = (x @ w).relu().sum()
        with tr.phase("backward"):
            y.backward()
        snapshot = dict(tr.by_category)
    assert snapshot["parameters"] == 64 * 64 * 4
    assert snapshot["inputs"] == 8 * 64 * 4
    assert snapshot["gradients"] == 64 * 64 * 4  # w.grad moved out of temporaries
    assert tr.peak_bytes >= snapshot["parameters"] + snapshot["inputs"] + snapshot["gradients"]


def test_budget_raises_a_memory_error_inside_the_op():
    with pytest.raises(BudgetExceeded):
        with TensorTracker(budget_bytes=10_000):
            keep = [torch.empty(1000) for _ in range(5)]  # 20 kB
            del keep


def test_same_program_gives_the_same_peak():
    def program():
        with TensorTracker() as tr:
            m = torch.nn.Linear(32, 32)
            tr.adopt_existing(parameters=list(m.parameters()))
            m(torch.randn(16, 32)).sum().backward()
        return tr.peak_bytes

    assert program() == program()
