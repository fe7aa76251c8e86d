"""Name -> class tables of the models and the data sources.

``MODELS`` and ``DATA_SOURCES`` say which classes ``model=NAME`` and ``data=NAME`` may train,
which checkpoints ``colorizer.load_model`` accepts, and what the tests sweep over. The built-in
entries are written out below (and imported only when first used, so ``import colorizer``
stays light: nothing registers itself as a side effect of an import).

Another installed package adds its own as entry points, which are read each time a table is
consulted::

    [project.entry-points."colorizer.models"]
    toy = "toypkg.model:ToyColorizer"
    [project.entry-points."colorizer.data"]
    toy = "toypkg.data:ToyDataModule"

or in code, ``MODELS.register("toy", "toypkg.model:ToyColorizer")``. Its configs
(``model/toy.yaml``, ``data/toy.yaml``) join Hydra's search path:
``hydra.searchpath=[pkg://toypkg.conf]``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from colorizer.errors import ConfigError


class Registry:
    """Names -> ``"module:Class"`` targets of one kind of class (subclasses of ``base``)."""

    def __init__(self, kind: str, group: str, base: str, builtin: dict[str, str]) -> None:
        self.kind, self.group, self.base = kind, group, base
        self._registered = dict(builtin)

    def register(self, name: str, target: str | type) -> None:
        """Add ``name`` -> a class or its ``"module:Class"`` path; a name stands for one class."""
        if isinstance(target, type):
            target = f"{target.__module__}:{target.__qualname__}"
        known = self._table().get(name)
        if known not in (None, target):
            raise ConfigError(f"{self.kind} {name!r} is already registered as {known}")
        self._registered[name] = target

    def names(self) -> list[str]:
        return sorted(self._table())

    def target(self, name: str) -> str:
        """``"module:Class"`` of ``name``; a ConfigError listing the names when unknown."""
        table = self._table()
        if name not in table:
            raise ConfigError(
                f"no {self.kind} named {name!r}: registered are {', '.join(sorted(table))}"
            )
        return table[name]

    def get(self, name: str) -> type:
        """The class registered as ``name`` (imported now)."""
        cls = _import(self.target(name))
        if not (isinstance(cls, type) and issubclass(cls, _import(self.base))):
            raise ConfigError(f"{self.kind} {name!r} ({self.target(name)}) is not a {self.base}")
        return cls

    def name_of(self, cls_or_target: type | str) -> str | None:
        """The registered name of a class (or of its ``"module:Class"`` path); None if none."""
        target = cls_or_target
        if isinstance(target, type):
            target = f"{target.__module__}:{target.__qualname__}"
        return next((name for name, t in self._table().items() if t == target), None)

    def name_or_fail(self, obj: object) -> str:
        """The registered name of ``obj``'s class; a ConfigError naming the class if none."""
        cls = type(obj)
        name = self.name_of(cls)
        if name is None:
            raise ConfigError(
                f"{cls.__module__}.{cls.__qualname__} is not a registered {self.kind}: register "
                f"it (colorizer.registry) or choose one of {', '.join(self.names())}"
            )
        return name

    def _table(self) -> dict[str, str]:
        plugins = {ep.name: ep.value for ep in entry_points(group=self.group)}
        return {**plugins, **self._registered}


def _import(target: str) -> object:
    module, _, name = target.partition(":")
    value: object = importlib.import_module(module)
    for part in name.split("."):
        value = getattr(value, part)
    return value


MODELS = Registry(
    "model",
    "colorizer.models",
    "colorizer.models.base:ColorizationModule",
    {
        "alpha": "colorizer.models.alpha:AlphaColorizer",
        "beta": "colorizer.models.beta:BetaColorizer",
        "fullcnn": "colorizer.models.fullcnn:FullCNNColorizer",
        "gan": "colorizer.models.gan:GANColorizer",
    },
)

DATA_SOURCES = Registry(
    "data source",
    "colorizer.data",
    "colorizer.data.base:ImageDataModule",
    {
        "coco": "colorizer.data.coco:CocoDataModule",
        "curated": "colorizer.data.curated:CuratedDataModule",
        "internet": "colorizer.data.internet:InternetDataModule",
        "shards": "colorizer.data.shards:ShardDataModule",
        "synthetic": "colorizer.data.synthetic:SyntheticDataModule",
    },
)
