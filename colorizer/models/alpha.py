"""alpha: the tiny fully convolutional colorizer of the seed project (32,202 parameters)."""

from __future__ import annotations

from colorizer.models.base import PlainCNNColorizer


class AlphaColorizer(PlainCNNColorizer):
    """Tiny CNN, any input size divisible by 8 (others are padded by ``predict_ab``).

    The seed recipe trains it with RMSprop (lr 1e-3), batch 1, MSE on very few images.
    """

    # The reference network: three stride-2 convs down to 1/8, three nearest upsamplings
    # back, tanh ab out.
    small_settings = {"optimizer": "adam"}  # it is already small; Adam learns in fewer steps
    layers = ("8s2", "8", "16", "16s2", "32", "32s2", "up", "32", "up", "16", "up", "2tanh")
