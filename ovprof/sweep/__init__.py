"""Sweeps: grids of runs from a TOML file, each point in its own worker, resumable from the store.

    ovprof sweep plan sweeps/quickstart.toml
    ovprof sweep run sweeps/quickstart.toml

spec.py parses a sweep file into a `SweepSpec` and expands it into frozen
`RunPlan`s (one per point, with a stable run_id); execute.py runs them through
`ovprof.runner.launch.run_point`; maxbatch.py is the max-batch search;
progress.py draws the progress. docs/sweeps.md describes the file format.
"""
