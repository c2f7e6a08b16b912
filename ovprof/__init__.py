"""ovprof: efficiency profiling and scaling studies of vision-encoder pretraining."""

__version__ = "0.1.0"
