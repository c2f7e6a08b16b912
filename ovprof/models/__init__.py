"""Models: towers, objectives and synthetic data. Importing this imports torch."""

from ovprof.models.objectives import Objective, build_model, tower_params

__all__ = ["Objective", "build_model", "tower_params"]
