"""Max-batch search: exact and within the trial bound (pure logic), and for real under a CPU memory budget."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from ovprof.results import store
from ovprof.sweep import maxbatch
from ovprof.sweep.spec import MaxBatchOptions

from conftest import ovprof, tiny_toml



def oracle(boundary: int, fail_at: dict[int, str] | None = None):
    """Batches up to `boundary` run ok, above it oom; `fail_at` plants other statuses."""
    tried: list[int] = []

    def attempt(b: int) -> maxbatch.Trial:
        tried.append(b)
        status = (fail_at or {}).get(b) or ("ok" if b <= boundary else "oom")
        return maxbatch.Trial(batch=b, status=status, run_id=f"r{b}")

    return attempt, tried


@pytest.mark.parametrize("start,granularity,limit", list(itertools.product([1, 2, 3, 8], [1, 2, 5, 8], [64, 100])))
def test_search_is_exact_within_granularity_and_within_the_trial_bound(start, granularity, limit):
    opts = MaxBatchOptions(start=start, granularity=granularity, limit=limit)
    for boundary in range(start, limit + 20):
        attempt, tried = oracle(boundary)
        r = maxbatch.search(opts, attempt)
        assert len(tried) == len(set(tried)), "a batch was tried twice"
        assert max(tried) <= limit, "tried above the limit"
        if boundary >= limit:
            assert (r.status, r.max_batch, r.first_oom_batch, r.limit_reached) == ("ok", limit, None, True)
            assert len(tried) == math.ceil(math.log2(limit / start)) + 1 == maxbatch.trial_bound(opts, None)
            continue
        assert r.status == "ok" and r.max_batch <= boundary < r.first_oom_batch
        assert r.first_oom_batch - r.max_batch <= granularity
        f = r.first_oom_batch
        # growth alone stays within ceil(log2(F / start)) + 2; bisection adds at most ceil(log2(F / g))
        assert r.growth_trials <= math.ceil(math.log2(f / start)) + 2 == maxbatch.growth_bound(opts, f)
        assert len(r.trials) <= maxbatch.trial_bound(opts, f)
        assert len(r.trials) <= math.ceil(math.log2(f / start)) + 2 + max(0, math.ceil(math.log2(f / granularity)))


def test_search_doubles_then_bisects():
    # start 1, granularity 1, boundary 5: growth 1 2 4 8, bisection 6 5 -> 6 trials, more than ceil(log2 6) + 2 = 5
    opts = MaxBatchOptions(start=1, granularity=1, limit=1024)
    attempt, tried = oracle(5)
    r = maxbatch.search(opts, attempt)
    assert tried == [1, 2, 4, 8, 6, 5] and (r.max_batch, r.first_oom_batch) == (5, 6)
    assert maxbatch.trial_bound(opts, 6) == 8


@pytest.mark.parametrize("bad", ["error", "timeout"])
def test_an_error_or_timeout_stops_the_search_and_is_never_read_as_oom(bad):
    opts = MaxBatchOptions(start=2, granularity=1, limit=1024)
    attempt, tried = oracle(100, fail_at={16: bad})
    r = maxbatch.search(opts, attempt)
    assert r.status == "error" and r.failed.batch == 16 and r.failed.status == bad
    assert tried == [2, 4, 8, 16] and r.first_oom_batch is None and r.max_batch == 8
    attempt, tried = oracle(20, fail_at={24: bad})  # during bisection: 2..32 then 24
    r = maxbatch.search(opts, attempt)
    assert r.status == "error" and tried[-1] == 24


def test_start_out_of_memory_reports_oom_and_no_max_batch():
    attempt, tried = oracle(3)
    r = maxbatch.search(MaxBatchOptions(start=8), attempt)
    assert (r.status, r.max_batch, r.first_oom_batch, tried) == ("oom", None, 8, [8])


# -- for real: DeepSpeed workers under a CPU memory budget -------------------------------

# vit-debug at batch 2: ~5.7 MB of live tensors, then ~0.5 MB per image: under a 0.01 GiB
# (10.7 MB) budget the boundary lies between 4 and 16.
SWEEP = tiny_toml('name = "mb"\ntimeout_s = 300', batch="max", memory_budget_gib=0.01) + """[max_batch]
start = 4
granularity = 4
limit = 64
"""


cli = ovprof


@pytest.mark.slow
def test_max_batch_search_finds_the_boundary_under_a_memory_budget_and_resumes(tmp_path):
    f = tmp_path / "mb.toml"
    f.write_text(SWEEP)
    out = tmp_path / "mb.jsonl"
    r = cli("sweep", "run", str(f), "--store", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    records = store.read(out)
    (summary,) = [x for x in records if x.get("kind") == "max_batch"]
    runs = {x["run_id"]: x for x in records if x.get("kind") == "run"}
    assert summary["status"] == "ok" and summary["schema_version"] == 2
    assert summary["config"]["batch"] == "max" and summary["config"]["memory_budget_gib"] == 0.01
    m, oom, g = summary["max_batch"], summary["first_oom_batch"], summary["granularity"]
    # the boundary, shown by the store itself: m ran ok, first_oom ran out of memory, within granularity
    by_batch = {x["config"]["batch"]: x for x in runs.values()}
    assert by_batch[m]["status"] == "ok" and by_batch[oom]["status"] == "oom"
    assert 4 <= m < oom <= m + g
    assert all(x["status"] == ("ok" if x["config"]["batch"] <= m else "oom") for x in runs.values())
    # every trial is a normal run record tagged with the search; none was run twice
    assert len(runs) == len(records) - 1 == summary["trial_count"] == len(summary["trials"])
    assert all(x["max_batch_search"] == summary["run_id"] for x in runs.values())
    assert [t["run_id"] for t in summary["trials"]] == [x["run_id"] for x in records if x.get("kind") == "run"]
    assert summary["trial_count"] <= summary["trial_bound"] == maxbatch.trial_bound(MaxBatchOptions(4, 4, 64), oom)
    assert summary["growth_trials"] <= math.ceil(math.log2(oom / 4)) + 2
    assert f"{m} (first oom {oom}" in r.stdout

    # a second run: the point is done
    r = cli("sweep", "run", str(f), "--store", str(out))
    assert r.returncode == 0 and len(store.read(out)) == len(records)
    # without the summary (killed before it was written): the trials are reused, none runs again
    out.write_text("".join(json.dumps(x) + "\n" for x in records if x.get("kind") == "run"))
    r = cli("sweep", "run", str(f), "--store", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    again = store.read(out)
    assert len(again) == len(records) and again[-1]["kind"] == "max_batch"
    assert (again[-1]["max_batch"], again[-1]["first_oom_batch"]) == (m, oom)
    assert all(t["reused"] for t in again[-1]["trials"])
