"""Runner: DeepSpeed config, the launcher (parent side) and the worker (one process per rank)."""
