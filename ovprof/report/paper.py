"""The OpenVision 2 paper's efficiency figures, as data: what a report puts beside measured numbers.

    python -c "from ovprof.report import paper; print(paper.for_setting('vit-l14', 224))"

Source: the OpenVision 2 project page ("Efficiency & Scaling") and the
UCSC-VLAA/OpenVision README, summarised in shared/reference/openvision.md.
JAX on TPU v4: training time on v4-512 (256 chips) for the whole two-stage
schedule (low-resolution pretraining, then a high-resolution fine-tune); peak
memory per chip on v4-64 (32 chips, 32 GiB each) at a global batch (2k = about
64 images per chip); FLOPs per image are forward GFLOPs at the final
resolution (the unit is not stated; it matches 2 x multiply-adds, which is
what ovprof.measure.flops counts). The memory figures are in the paper's
"GB"; ovprof's own are GiB (2^30 bytes), so the two are never mixed in one
column. Ratios are OpenVision / OpenVision 2 (> 1: caption-only saves).
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "OpenVision 2 (arXiv 2509.01644), project page 'Efficiency & Scaling'; TPU v4, JAX"
LABEL = "paper (TPU v4, JAX)"  # how a plot's legend names the paper's figures
MEMORY_POD = "TPU v4-64 (32 chips of 32 GiB)"  # where the memory and max-batch comparisons ran


@dataclass(frozen=True)
class PaperSetting:
    """The paper's figures for one encoder at one resolution."""

    label: str  # as the paper names it
    encoder: str  # ovprof preset
    res: int  # pixels
    time_h_openvision: float  # TPU v4-512, whole two-stage schedule, hours
    time_h_caption: float
    gflops_openvision: float  # forward GFLOPs per image at `res`
    gflops_caption: float
    memory_batch: str  # global batch of the memory comparison (v4-64)
    memory_gb_openvision: float  # peak memory per chip, GB as the paper states it
    memory_gb_caption: float
    max_batch_openvision: str  # largest global batch that fits on v4-64
    max_batch_caption: str
    max_batch_ratio: float
    memory_rows: tuple[tuple[str, str, str], ...]  # (global batch, OpenVision GB, OpenVision 2 GB), the full table

    @property
    def time_ratio(self) -> float:
        return self.time_h_openvision / self.time_h_caption

    @property
    def flops_ratio(self) -> float:
        return self.gflops_openvision / self.gflops_caption

    @property
    def memory_ratio(self) -> float:
        return self.memory_gb_openvision / self.memory_gb_caption


SETTINGS: tuple[PaperSetting, ...] = (
    PaperSetting(
        label="ViT-L/14@224", encoder="vit-l14", res=224,
        time_h_openvision=83.0, time_h_caption=57.0,
        gflops_openvision=271.75, gflops_caption=208.90,
        memory_batch="2k", memory_gb_openvision=24.5, memory_gb_caption=13.8,
        max_batch_openvision="2k", max_batch_caption="8k", max_batch_ratio=4.0,
        memory_rows=(("2k", "24.5", "13.8"), ("4k", "OOM", "22.1"), ("8k", "-", "28.4")),
    ),
    PaperSetting(
        label="SoViT-400M/14@384", encoder="vit-so400m14", res=384,
        time_h_openvision=241.0, time_h_caption=121.0,
        gflops_openvision=1636.75, gflops_caption=1017.74,
        memory_batch="512", memory_gb_openvision=27.4, memory_gb_caption=14.5,
        max_batch_openvision="512", max_batch_caption="1k", max_batch_ratio=2.0,
        memory_rows=(("512", "27.4", "14.5"), ("1k", "OOM", "28.8")),
    ),
)

# The ratios the paper headlines, quoted as printed (the time ratio of SoViT is
# 241/121 = 1.99; the memory ratios are 24.5/13.8 = 1.78 and 27.4/14.5 = 1.89).
HEADLINE = {
    "vit-l14": {"time_x": 1.46, "memory_x": 1.78, "max_batch_x": 4.0, "flops_x": 1.30},
    "vit-so400m14": {"time_x": 1.99, "memory_x": 1.89, "max_batch_x": 2.0, "flops_x": 1.61},
}

# Token masking alone vs the CLIPA schedule (ViT-L/14@224, v4-64, hours): where the time goes.
TIME_BREAKDOWN_H = {"no schedule, no masking": 217.0, "masking only": 190.0, "CLIPA schedule only": 67.0,
                    "both": 55.0}

PAPER_MASK_RATIO = 0.65  # keep_ratio 0.35 in the released training config
PAPER_MASK = "keeps 35% of the visual tokens (drops 0.65) at the decoder input"
PAPER_PRECISION = "not stated in the paper's tables"


def for_setting(encoder: str, res: int) -> PaperSetting | None:
    """The paper's figures when `encoder`@`res` is one of its two settings, else None."""
    return next((s for s in SETTINGS if s.encoder == encoder and s.res == res), None)


def max_batch_note() -> str:
    """What the paper's max batch is, so that a reader does not compare ovprof's search with a grid unawares."""
    grids = "; ".join(
        f"{s.label}: {'/'.join(b for b, _, _ in s.memory_rows)} global, OpenVision up to {s.max_batch_openvision}, "
        f"OpenVision 2 up to {s.max_batch_caption} ({s.max_batch_ratio:g}x)" for s in SETTINGS)
    return (f"The paper's max batch is not a search: it is the largest global batch of a fixed grid that ran on "
            f"{MEMORY_POD} without running out of memory ({grids}). Its ratios are ratios of grid points, so "
            "powers of two, and OpenVision 2's figure is the largest batch the grid lists (it may fit more). "
            "ovprof's max batch is per device: a search (doubling, then bisection) for the largest batch that runs "
            "under the memory budget or the GPU's memory. Compare the ratios knowing this.")


def differences(setting: PaperSetting, *, hardware: str, world_size: int, batch: int, precision: str,
                torch: str | None, deepspeed: str | None, mask: str) -> str:
    """What differs between a measured row and the paper's figures beside it, in one sentence."""
    return (f"hardware: {hardware} x {world_size} vs TPU v4 (time: v4-512; memory: v4-64, 32 GiB chips); "
            f"framework: PyTorch {torch or '?'} + DeepSpeed {deepspeed or '?'} vs JAX; "
            f"batch: {batch} per device vs the paper's global batch (memory at {setting.memory_batch} global, "
            f"about {_per_chip(setting.memory_batch)} per chip); "
            f"precision: {precision} vs {PAPER_PRECISION}; masking: {mask} vs the paper's, which {PAPER_MASK}; "
            "time: one training step here vs hours of the whole two-stage schedule there")


def _per_chip(global_batch: str) -> int:
    n = int(global_batch[:-1]) * 1024 if global_batch.endswith("k") else int(global_batch)
    return n // 32
