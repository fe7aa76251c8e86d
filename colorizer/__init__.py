"""colorizer: automatic colorization of grayscale photographs (Lightning + Hydra).

Python API: ``colorizer.load_model(path)`` returns a trained model in eval mode;
``model.colorize(images)`` maps float ``[B, 1 or 3, H, W]`` in [0, 1] to RGB ``[B, 3, H, W]``.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_model"]


def __getattr__(name: str):
    # Deferred so that `import colorizer.color` does not pull in Lightning.
    if name == "load_model":
        from colorizer.models import load_model

        return load_model
    raise AttributeError(f"module 'colorizer' has no attribute {name!r}")
