"""What the applications need to know about a model, in one place: ``ModelSpec``.

A LightningModule holds its spec (``ColorizationModule.spec``); ``colorizer.run`` records the
size it trains at, and the spec is written into every checkpoint (``colorizer_spec``) and
every ONNX export (``colorizer.*`` metadata). ``colorize``, ``evaluate``, ``export``, ``bench``
and the video path read sizes and names from it, never from file names or defaults of their own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from colorizer.errors import ConfigError

SPEC_KEY = "colorizer_spec"


@dataclass(frozen=True)
class ModelSpec:
    """A model's name and geometry.

    Attributes:
        name: its registry name, the word of ``model=NAME``.
        size_multiple: what a fully convolutional network needs H and W divisible by.
        input_size: the fixed square side a fixed-size network works at (None: any size,
            a multiple of ``size_multiple``).
        image_size: the side of the crops it was trained at, which inference and evaluation
            use unless told otherwise (None: not trained by ``colorizer.run`` yet).
        hints: whether it takes colour hints (``colorizer.hints``) besides L.
    """

    name: str
    size_multiple: int = 1
    input_size: int | None = None
    image_size: int | None = None
    hints: bool = False

    @property
    def training_multiple(self) -> int:
        """What a training crop's side must be a multiple of."""
        return self.input_size or self.size_multiple

    def check_training_size(self, size: int, key: str = "data.image_size", hint: str = "") -> None:
        """Refuse, in one line naming the rule and the nearest sizes that work, a training
        side the network cannot take (inference takes any size: it resizes or pads)."""
        multiple = self.training_multiple
        if size % multiple == 0:
            return
        below = size - size % multiple
        nearest = f"{below} or {below + multiple}" if below else f"{multiple}"
        raise ConfigError(
            f"model={self.name} trains on sides that are multiples of {multiple}: {key}={size} "
            f"is not one; use {key}={nearest}{hint}"
        )

    def working_size(self, requested: int | None, key: str = "size") -> int:
        """The working size of an application: ``requested``, or the model's own when None
        (its fixed input size, else the size it was trained at)."""
        if requested is not None:
            check_size_option(key, requested)
            return requested
        own = self.image_size or self.input_size
        if own is None:
            raise ConfigError(
                f"model={self.name} does not record the size it was trained at: set {key}=N"
            )
        return own

    def trained_at(self, image_size: int) -> ModelSpec:
        return replace(self, image_size=image_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSpec:
        def optional_int(key: str) -> int | None:
            value = values.get(key)
            return None if value in (None, "") else int(value)

        return cls(
            name=str(values["name"]),
            size_multiple=int(values.get("size_multiple") or 1),
            input_size=optional_int("input_size"),
            image_size=optional_int("image_size"),
            hints=str(values.get("hints", False)).lower() in ("true", "1"),
        )


def check_size_option(key: str, value: object) -> None:
    """A size option of an application: an integer >= 1, or null for the model's own."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{key}={value!r} must be an integer >= 1, or null: the model's own size")
