"""beta: the seed project's deeper plain CNN (3,892,194 parameters)."""

from __future__ import annotations

from colorizer.models.base import PlainCNNColorizer


class BetaColorizer(PlainCNNColorizer):
    """Deeper CNN; trained at 256² in the reference, and fully convolutional (multiples of 8).

    The seed recipe trains it with RMSprop, batch 10, MSE and augmentation (flips and small
    rotations, zooms and shears; see ``experiment=beta_seed``).
    """

    # The reference network: down to 1/8 in three stride-2 convs, back up to 1/2, predict ab
    # there and upsample last (the reference predicts at 128² for a 256² input).
    small_settings = {"optimizer": "adam"}  # the seed's RMSprop needs many more steps
    layers = (
        "64", "64s2", "128", "128s2", "256", "256s2", "512", "256", "128",
        "up", "64", "up", "32", "2tanh", "up",
    )  # fmt: skip
