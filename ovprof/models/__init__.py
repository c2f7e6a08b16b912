"""Torch building blocks: towers (vit.py, text.py, layers.py), losses, the ImageTextModel shell, synthetic data.

    python -c "from ovprof.models.vit import VisionTower; from ovprof.presets import ENCODERS; print(VisionTower(ENCODERS['vit-debug'], 32))"

Nothing here knows an objective or a run config: ovprof/objectives/ assembles
these blocks per objective (`ovprof.objectives.build_model(cfg)`). Importing a
submodule imports torch.
"""
