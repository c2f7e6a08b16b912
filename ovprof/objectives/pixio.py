"""pixio: MAE with Pixio's defaults: a 32-block decoder, 4 x 4-patch masking blocks, 8 class tokens.

    ovprof run --objective pixio --encoder vit-debug --zero 3 --world-size 2 --steps 3 --warmup 1

"In Pursuit of Pixel Supervision for Visual Pre-training" (Pixio) keeps MAE's
recipe (ovprof/objectives/mae.py holds the model, formulas and checks) with three
changes that move its cost (pretraining/models_pixio.py and its H/16 script):
the decoder is 512 wide x 32 blocks (dec-pixio) instead of 8, masking keeps or
drops whole 4 x 4-patch blocks (mask_grid 4: int(blocks x (1 - 0.75)) blocks kept
per sample), and the encoder carries 8 class tokens. Images 256 px, patch 16
(vit-h16, vit-1b16, vit-5b16 are its encoders).
"""

from __future__ import annotations

from ovprof.objectives import mae

NAME = "pixio"
RECIPE = mae.Recipe(pixel_decoder="dec-pixio", mask_grid=4, cls_tokens=8)

OBJECTIVE = mae.make_objective(
    NAME, "Pixio (MAE, deep decoder, block masking)",
    "mae with a 512 x 32 pixel decoder, 4 x 4-patch masking blocks and 8 class tokens",
    RECIPE)
