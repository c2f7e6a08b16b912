"""ovprof: efficiency profiling and scaling studies of vision-encoder pretraining.

    import ovprof
    runs = ovprof.load_records("results/quickstart.jsonl")   # a pandas DataFrame, one row per run_id
"""

__version__ = "0.1.0"

_API = ("load_records",)  # the Python API, in ovprof/api.py


def __getattr__(name: str):
    # PEP 562: `ovprof.load_records` loads ovprof.api (and pandas) on first use only, so `import ovprof` stays
    # free of them and the package's own modules, which import `ovprof` for __version__, do not depend on it.
    if name in _API:
        import importlib

        return getattr(importlib.import_module("ovprof.api"), name)
    raise AttributeError(f"module 'ovprof' has no attribute {name!r}")
