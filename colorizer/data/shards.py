"""Prepared shards: any image source, resized once, in WebDataset tar files, read from a
folder or an S3 bucket (``data=shards data.root=DIR|s3://bucket/prefix``).

Layout of a prepared folder (``python -m colorizer.prepare``)::

    manifest.json          counts, resolution, source, splits, and each shard's size and SHA-256
    train-000000.tar       WebDataset shards: <key>.jpg (RGB JPEG, quality 95, 4:4:4, at the
    train-000001.tar       resized cache's area rule) and <key>.json ({"source", "height",
    val-000000.tar         "width"}), keys in the order prepare wrote them
    test-000000.tar

Any WebDataset reader reads the shards (``webdataset.WebDataset("train-{000000..000009}.tar")``);
training reads them at random positions instead, through the training stream
(:mod:`colorizer.data.stream`), so that order, crops, DDP shares and mid-epoch resume stay
exact as for folders. A pass visits the shards in a seeded order and shuffles the images of
``shuffle_shards`` shards at a time: each process reads a few shards at once (what an S3
cache must hold), not the whole dataset. DDP ranks take contiguous shares of a pass, so
each rank (and node) reads about 1/N of the shards.
"""

from __future__ import annotations

import bisect
import json
import logging
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchcodec.decoders import decode_jpeg

from colorizer.data.base import ImageDataModule, seeded_item, split_key
from colorizer.data.shard_store import (
    MANIFEST,
    ShardDamaged,
    ShardStore,
    StoreUnavailable,
    open_store,
)
from colorizer.errors import ConfigError, DataError, require_int

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FORMAT = "colorizer-shards"
VERSION = 1
_OPEN_INDEXES = 16  # shard member tables kept per process


@dataclass(frozen=True)
class ShardInfo:
    """One tar file of a split, as the manifest records it."""

    name: str
    images: int
    bytes: int
    sha256: str


def read_manifest(store: ShardStore) -> dict[str, Any]:
    """The manifest of ``store``, checked to be one ``colorizer.prepare`` wrote."""
    try:
        manifest = json.loads(store.read_manifest())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{store.location}/manifest.json is not valid JSON ({error}): "
                        "prepare the shards again") from error  # fmt: skip
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{store.location}/manifest.json was not written by colorizer.prepare")
    if manifest.get("version", 0) > VERSION:
        raise DataError(f"{store.location} was prepared by a newer colorizer (format version "
                        f"{manifest['version']}): upgrade colorizer")  # fmt: skip
    return manifest


def split_shards(manifest: Mapping[str, Any], split: str) -> list[ShardInfo]:
    return [ShardInfo(**shard) for shard in manifest["splits"][split]["shards"]]


class ShardDataset(Dataset[torch.Tensor]):
    """The images of a split's shards; items are ``transform`` of uint8 ``[3, H, W]``.

    Training keys are ``(epoch, index)`` (each crop seeded by them, as for image folders);
    evaluation keys are indices. A shard or an image that cannot be read (damaged since it
    was prepared) stops the run with one line naming it; with ``skip_bad=True`` it is skipped
    instead (logged once per process) and the next readable image used. A store that cannot
    be reached (network, credentials) always stops the run: its shards may be fine.
    """

    def __init__(
        self,
        store: ShardStore,
        shards: list[ShardInfo],
        transform: Callable[[torch.Tensor], torch.Tensor],
        *,
        seed: int | None = None,
        skip_bad: bool = False,
        shuffle_shards: int = 4,
    ) -> None:
        self.store, self.shards, self.transform = store, shards, transform
        self.seed, self.skip_bad, self.shuffle_shards = seed, skip_bad, shuffle_shards
        self.starts = [0]
        for shard in shards:
            self.starts.append(self.starts[-1] + shard.images)
        self._indexes: OrderedDict[int, list[tuple[int, int, dict]]] = OrderedDict()
        self._bad: set[int] = set()  # shards, and images, found unreadable (skip_bad)
        self._bad_images: set[int] = set()

    contiguous_ranks = True  # DDP ranks take contiguous shares of a pass (module docstring)

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        epoch, index = split_key(key)
        return seeded_item(self.seed, epoch, index, self._load)

    def pass_order(self, generator: torch.Generator) -> list[int]:
        """One pass's order: the shards in a random order, the images of each
        ``shuffle_shards`` consecutive ones shuffled together."""
        order: list[int] = []
        shards = torch.randperm(len(self.shards), generator=generator).tolist()
        for first in range(0, len(shards), self.shuffle_shards):
            block = [i for s in shards[first : first + self.shuffle_shards]
                     for i in range(self.starts[s], self.starts[s + 1])]  # fmt: skip
            order.extend(block[p] for p in torch.randperm(len(block), generator=generator))
        return order

    def _locate(self, index: int) -> tuple[int, int]:
        shard = bisect.bisect_right(self.starts, index) - 1
        return shard, index - self.starts[shard]

    def _load(self, index: int) -> torch.Tensor:
        """Image ``index``, or with ``skip_bad`` the next readable one. What is unreadable is
        the same in every process and run (a damaged shard at its first image, a damaged
        image alone), so skipping keeps batches independent of workers and resumes."""
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            shard, position = self._locate(candidate)
            if shard in self._bad or candidate in self._bad_images:
                continue
            name = f"{self.store.location}/{self.shards[shard].name}"
            try:
                self._members(shard)
            except StoreUnavailable:
                raise  # the store, not the shard: never skipped
            except (ShardDamaged, OSError, tarfile.TarError, ValueError, KeyError) as error:
                self._refuse(name, _reason(error), error, shard=shard)
                continue
            try:
                return self.transform(self._decode(shard, position))
            except StoreUnavailable:
                raise
            except (OSError, RuntimeError, ValueError) as error:
                self._refuse(f"image {position} of {name}", _reason(error), error)
                self._bad_images.add(candidate)
        raise DataError(f"none of the {len(self)} images of {self.store.location} can be read")

    def _refuse(self, what: str, reason: str, error: Exception, shard: int | None = None):
        if not self.skip_bad:
            raise DataError(
                f"{'shard ' if shard is not None else ''}{what} cannot be read ({reason}): "
                "prepare or upload it again, or set data.skip_bad_shards=true to train without it"
            ) from error
        if shard is None:
            log.warning("skipped %s: %s", what, reason)
            return
        self._bad.add(shard)
        log.warning("skipped shard %s (%d images): %s", what, self.shards[shard].images, reason)

    def _decode(self, shard: int, position: int) -> torch.Tensor:
        offset, size, _ = self._members(shard)[position]
        info = self.shards[shard]
        # Opened for each image: a bucket's cache may have evicted the shard since (then it
        # is downloaded again); an open file stays readable whatever the cache does.
        with self.store.open(info.name, info.bytes, info.sha256) as file:
            file.seek(offset)
            data = file.read(size)
        if len(data) != size:
            raise OSError(f"image {position} is cut short")
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode="RGB")

    def _members(self, shard: int) -> list[tuple[int, int, dict]]:
        """``(offset, size, meta)`` of each image of a shard, from its tar headers."""
        if shard in self._indexes:
            self._indexes.move_to_end(shard)
            return self._indexes[shard]
        info = self.shards[shard]
        images: dict[str, tuple[int, int]] = {}
        metas: dict[str, dict] = {}
        with (
            self.store.open(info.name, info.bytes, info.sha256) as file,
            tarfile.open(fileobj=file) as tar,
        ):
            for member in tar:
                key, extension = _key_and_extension(member.name)
                if extension in ("jpg", "jpeg"):
                    images[key] = (member.offset_data, member.size)
                elif extension == "json":
                    metas[key] = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
        if len(images) != info.images:
            raise tarfile.TarError(f"{len(images)} images where the manifest has {info.images}")
        table = [(*images[key], metas.get(key, {})) for key in images]
        self._indexes[shard] = table
        if len(self._indexes) > _OPEN_INDEXES:
            self._indexes.popitem(last=False)
        return table


def _key_and_extension(member: str) -> tuple[str, str]:
    """WebDataset's split of a member name: the key is everything up to the first dot of the
    file name (folders included), the extension the rest."""
    folder, _, name = member.rpartition("/")
    stem, _, extension = name.partition(".")
    return f"{folder}/{stem}" if folder else stem, extension.lower()


def _reason(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def is_shard_source(location: str) -> bool:
    """Whether ``location`` names prepared shards: ``s3://...`` or a folder whose
    manifest.json colorizer.prepare wrote (another program's manifest.json is not one)."""
    if location.startswith("s3://"):
        return True
    manifest = Path(location).expanduser() / MANIFEST
    try:
        return json.loads(manifest.read_bytes()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def extract_split(
    location: str, split: str, folder: Path, *, endpoint_url: str | None = None
) -> int:
    """Write the images of a split (``all``: every split) of prepared shards into ``folder``,
    named after their sources (sub-folders and extensions kept, so no two meet; a URL's image,
    or a name that would leave the folder, by its key), for tools that read image files;
    returns how many."""
    if split not in (*SPLITS, "all"):
        raise ConfigError(f"input_split={split} is not one of: {', '.join(SPLITS)}, all")
    store = open_store(location, endpoint_url=endpoint_url)
    manifest = read_manifest(store)
    written = 0
    root = folder.resolve()
    for name in SPLITS if split == "all" else (split,):
        for shard in split_shards(manifest, name):
            with (
                store.open(shard.name, shard.bytes, shard.sha256) as file,
                tarfile.open(fileobj=file) as tar,
            ):
                members = {member.name: member for member in tar.getmembers()}
                for member in members.values():
                    key, extension = _key_and_extension(member.name)
                    data = tar.extractfile(member) if extension in ("jpg", "jpeg") else None
                    if data is None:
                        continue
                    meta = members.get(f"{key}.json")
                    described = tar.extractfile(meta) if meta is not None else None
                    source = str(json.loads(described.read()).get("source") if described else key)
                    target = root / source
                    if "://" in source or not target.resolve().is_relative_to(root):
                        target = root / f"{key.replace('/', '_')}.jpg"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data.read())
                    written += 1
    return written


class ShardDataModule(ImageDataModule):
    """Shards written by ``colorizer.prepare``, from a folder or ``s3://bucket/prefix``.

    The splits are the ones the source defined when it was prepared. Training crops as from
    the source's folder (the shards hold each image at the area the crops need); evaluation
    resizes and centre-crops. ``image_size`` may be at most the size the shards were prepared
    for.

    Args:
        root: the prepared folder, or ``s3://bucket/prefix`` where it was uploaded.
        endpoint_url: an S3-compatible endpoint (MinIO, Ceph...); None: boto3's
            (``AWS_ENDPOINT_URL``, else AWS).
        cache_dir: where shards read from a bucket are kept (None: ``~/.cache/colorizer/
            shards/<bucket>-<hash>``); shared by the processes of a machine.
        cache_limit_gb: the cache's bound; least recently used shards go first.
        skip_bad_shards: skip a missing, truncated or unreadable shard (counted in the log)
            instead of stopping.
        shuffle_shards: shards whose images are shuffled together in a pass.
        Others: as :class:`~colorizer.data.base.ImageDataModule`.
    """

    source_settings = ("root",)
    split_settings = ()  # the split was fixed when the shards were prepared

    def __init__(
        self,
        root: str,
        image_size: int = 128,
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 42,
        augment: Mapping[str, Any] | None = None,
        endpoint_url: str | None = None,
        cache_dir: str | None = None,
        cache_limit_gb: float = 20.0,
        skip_bad_shards: bool = False,
        shuffle_shards: int = 4,
    ) -> None:
        super().__init__(image_size, batch_size, num_workers, seed, augment)
        self.save_hyperparameters()
        if isinstance(cache_limit_gb, bool) or not (
            isinstance(cache_limit_gb, int | float) and cache_limit_gb > 0
        ):
            raise DataError(f"data.cache_limit_gb={cache_limit_gb!r} must be a positive number")
        require_int("data.shuffle_shards", shuffle_shards, 1, error=DataError)
        self.store = open_store(str(root), endpoint_url=endpoint_url, cache_dir=cache_dir,
                                cache_limit_gb=cache_limit_gb)  # fmt: skip
        self.skip_bad_shards = skip_bad_shards
        self.shuffle_shards = shuffle_shards
        self.manifest: dict[str, Any] | None = None
        self.usable: dict[str, list[ShardInfo]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.manifest is None:
            self.manifest = read_manifest(self.store)
            self._check_size(self.manifest)
            self.usable = self._present_shards(self.manifest)
        datasets = {
            split: ShardDataset(
                self.store,
                self.usable[split],
                self.train_transform() if split == "train" else self.eval_transform(),
                seed=self.seed,
                skip_bad=self.skip_bad_shards,
                shuffle_shards=self.shuffle_shards,
            )
            for split in SPLITS
        }
        self.train_set, self.val_set, self.test_set = (datasets[s] for s in SPLITS)

    def _check_size(self, manifest: Mapping[str, Any]) -> None:
        prepared = int(manifest["min_side"])
        if self.image_size > prepared:
            raise DataError(
                f"data.image_size={self.image_size}: {self.store.location} was prepared for "
                f"image_size up to {prepared}; train at {prepared} or less, or prepare again "
                f"with data.image_size={self.image_size}"
            )

    def _present_shards(self, manifest: Mapping[str, Any]) -> dict[str, list[ShardInfo]]:
        """Each split's shards that are there, whole: one line and DataError for the first
        that is not, unless ``skip_bad_shards`` (then they are left out and counted)."""
        present = self.store.sizes()
        usable, bad = {}, []
        for split in SPLITS:
            usable[split] = []
            for shard in split_shards(manifest, split):
                size = present.get(shard.name)
                if size == shard.bytes:
                    usable[split].append(shard)
                    continue
                what = "missing" if size is None else f"{size} bytes, not {shard.bytes}"
                bad.append((shard, what))
        if bad and not self.skip_bad_shards:
            shard, what = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise DataError(
                f"shard {self.store.location}/{shard.name} is {what}{more}: prepare or upload "
                "it again, or set data.skip_bad_shards=true to train without it"
            )
        if bad:
            lost = sum(shard.images for shard, _ in bad)
            names = ", ".join(f"{shard.name} ({what})" for shard, what in bad[:3])
            log.warning("skipped %d bad shard%s (%d images): %s%s", len(bad), "s" * (len(bad) > 1),
                        lost, names, ", ..." if len(bad) > 3 else "")  # fmt: skip
        counts = {split: sum(s.images for s in usable[split]) for split in SPLITS}
        if not counts["train"]:
            raise DataError(f"{self.store.location} has no readable training shard")
        log.info(
            "shards %s: %s images in %d shards at %d² px (prepared from %s)",
            self.store.location, ", ".join(f"{counts[s]} {s}" for s in SPLITS),
            sum(len(usable[s]) for s in SPLITS), manifest["side"],
            manifest.get("source", {}).get("description", "?"),
        )  # fmt: skip
        return usable
