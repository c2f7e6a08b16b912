"""The CI gate on memory regressions: a committed baseline against the latest results.

    ovprof check --baseline reports/baselines/cpu-ci-memory.json --results results/ci-memory.jsonl

`baseline` builds, writes and loads the baseline file; `compare` matches its
points with records and gives one verdict per point and metric; `junit` turns
the outcome into a JUnit XML report for CI. Pure Python (no torch), so the
command starts fast. See docs/ci.md for the semantics.
"""

from ovprof.check.baseline import build_baseline, dump_baseline, load_baseline
from ovprof.check.compare import CheckResult, Gate, compare, parse_tolerance

__all__ = ["CheckResult", "Gate", "build_baseline", "compare", "dump_baseline", "load_baseline",
           "parse_tolerance"]
