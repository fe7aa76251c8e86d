"""Prepared shards: ``colorizer.prepare`` writes a source into WebDataset tar shards, and
``data=shards`` trains from them, from a folder or from a real S3 server (moto's, started on
127.0.0.1 by the tests, checking credentials)."""

from __future__ import annotations

import hashlib
import io
import json
import socket
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from colorizer import prepare as prepare_module
from colorizer.data.cache import copy_size
from colorizer.data.coco import CocoDataModule
from colorizer.data.curated import CuratedDataModule
from colorizer.data.shards import ShardDataModule, extract_split, is_shard_source
from colorizer.data.stream import ShuffledStream
from colorizer.prepare import prepare
from colorizer.run import train
from tests.helpers import ImageServer, Response, assert_one_line_error, colour_photo

REPO = Path(__file__).resolve().parents[2]

PHOTOS = [f"p{i:02d}.jpg" for i in range(16)]
SIZE = ["data.image_size=32"]
# Epoch-based, deterministic, loader workers and flips: order, crops and flips must all resume.
RUN = [
    "model=alpha", "model.optimizer=adam", "data=shards", *SIZE, "data.batch_size=3",
    "data.num_workers=2", "logger=none", "trainer.accelerator=cpu", "trainer.deterministic=true",
    "trainer.max_steps=-1", "trainer.val_check_interval=1.0", "trainer.check_val_every_n_epoch=1",
    "trainer.num_sanity_val_steps=0", "seed=3",
]  # fmt: skip


@pytest.fixture
def photos(tmp_path: Path, write_photos, truncated_jpeg) -> Path:
    """16 colour photos, one gray and one cut-off JPEG, in one folder (split by seed)."""
    folder = tmp_path / "photos"
    write_photos(folder, PHOTOS, size=(64, 48))
    Image.new("RGB", (64, 48), (90, 90, 90)).save(folder / "gray.png")
    (folder / "cut.jpg").write_bytes(truncated_jpeg)
    return folder


def prepared(make_cfg, photos: Path, output: Path, *args: str) -> dict:
    cfg = make_cfg(f"data.root={photos}", f"output={output}", "shard_images=4", *SIZE,
                   "workers=1", *args, config_name="prepare")  # fmt: skip
    return prepare(cfg)


def shard_sources(folder: Path, split: str) -> list[str]:
    """The source names in ``split``'s shards, read with the webdataset library itself."""
    urls = sorted(str(p) for p in folder.glob(f"{split}-*.tar"))
    samples = wds.WebDataset(urls, shardshuffle=False)
    return [json.loads(sample["json"])["source"] for sample in samples]


def test_prepare_writes_the_sources_splits_into_webdataset_shards(make_cfg, photos, tmp_path):
    manifest = prepared(make_cfg, photos, tmp_path / "shards")
    splits = CuratedDataModule(root=str(photos), image_size=32).find_splits()
    for split, files in splits.items():
        names = [file.name for file in files]
        assert shard_sources(tmp_path / "shards", split) == names, split
        assert manifest["splits"][split]["images"] == len(names)
    assert manifest["skipped"] == {"grayscale": 1, "truncated or corrupt": 1}
    assert manifest["side"] == 55 and manifest["min_side"] == 32  # the resized cache's rule
    first = tmp_path / "shards" / "train-000000.tar"
    samples = list(wds.WebDataset(str(first), shardshuffle=False))
    assert len(samples) == 4
    for sample in samples:
        meta = json.loads(sample["json"])
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.mode == "RGB"
        assert (image.height, image.width) == copy_size(48, 64, 55, 32)
        original = Image.open(photos / meta["source"]).resize(image.size, Image.BILINEAR)
        difference = torch.tensor(list(image.get_flattened_data())) - torch.tensor(
            list(original.get_flattened_data())
        )
        assert difference.abs().float().mean() < 6  # the photo itself, not another one


def test_coco_is_prepared_with_its_own_splits_and_refusals(make_cfg, coco_root, tmp_path):
    cfg = make_cfg("data=coco", f"data.root={coco_root}", "data.categories=[dog,cat]", *SIZE,
                   f"output={tmp_path / 'shards'}", "workers=1", config_name="prepare")  # fmt: skip
    manifest = prepare(cfg)
    module = CocoDataModule(str(coco_root), categories=["dog", "cat"], image_size=32)
    for split, files in module.find_splits().items():
        expected = [file.relative_to(coco_root).as_posix() for file in files]
        assert shard_sources(tmp_path / "shards", split) == expected, split
    assert manifest["source"]["data"] == "coco"
    assert manifest["skipped"] == {"grayscale": 1, "unsafe file_name": 1, "missing file": 1}


def test_keys_are_unique_across_splits_and_other_tars_in_the_folder_are_left_alone(
    make_cfg, photos, tmp_path
):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "my-backup.tar").write_bytes(b"not ours")
    manifest = prepared(make_cfg, photos, tmp_path / "shards")
    urls = sorted(str(p) for p in (tmp_path / "shards").glob("*-0*.tar"))
    keys = [sample["__key__"] for sample in wds.WebDataset(urls, shardshuffle=False)]
    assert len(keys) == len(set(keys)) == manifest["images"] == 16
    prepared(make_cfg, photos, tmp_path / "shards", "shard_images=20")  # fewer, larger shards
    assert (tmp_path / "shards" / "my-backup.tar").read_bytes() == b"not ours"
    assert sorted(p.name for p in (tmp_path / "shards").glob("*-0*.tar")) == [
        "test-000000.tar", "train-000000.tar", "val-000000.tar",
    ]  # fmt: skip


def test_prepare_is_the_same_with_any_number_of_processes(make_cfg, photos, tmp_path):
    one = prepared(make_cfg, photos, tmp_path / "one")
    two = prepared(make_cfg, photos, tmp_path / "two", "workers=2")
    assert one["splits"] == two["splits"]  # names, counts, sizes and SHA-256 of every shard


def test_an_interrupted_prepare_makes_only_the_shards_it_had_not_finished(
    make_cfg, photos, tmp_path, monkeypatch
):
    made = []
    write = prepare_module.write_shard

    def interrupted_after_two(job):
        if len(made) == 2:
            raise KeyboardInterrupt
        made.append(job.name)
        return write(job)

    monkeypatch.setattr(prepare_module, "write_shard", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepared(make_cfg, photos, tmp_path / "shards")
    assert not (tmp_path / "shards" / "manifest.json").exists()  # not finished
    first = {name: (tmp_path / "shards" / name).stat().st_mtime_ns for name in made}

    def counted(job):
        made.append(job.name)
        return write(job)

    monkeypatch.setattr(prepare_module, "write_shard", counted)
    manifest = prepared(make_cfg, photos, tmp_path / "shards")
    assert len(made) == len({*made})  # no shard made twice
    for name, mtime in first.items():
        assert (tmp_path / "shards" / name).stat().st_mtime_ns == mtime
    assert manifest["splits"] == prepared(make_cfg, photos, tmp_path / "straight")["splits"]


def stream_of(module: ShardDataModule, replicas: int, rank: int) -> ShuffledStream:
    return ShuffledStream(module.train_set, 3, seed=module.seed, num_replicas=replicas, rank=rank)


def test_ranks_share_each_pass_exactly_once_each_reading_about_half_the_shards(
    make_cfg, photos, tmp_path
):
    prepared(make_cfg, photos, tmp_path / "shards", "shard_images=2")
    module = ShardDataModule(root=str(tmp_path / "shards"), image_size=32, shuffle_shards=2)
    module.setup("fit")
    size = len(module.train_set)
    per_pass = -(-size // 2)
    for epoch in range(3):
        seen, shards_read = Counter(), []
        for rank in (0, 1):
            stream = stream_of(module, 2, rank)
            positions = range(epoch * per_pass, (epoch + 1) * per_pass)
            keys = [stream.keys(p // 3)[p % 3] for p in positions]
            assert {e for e, _ in keys} == {epoch}
            seen.update(index for _, index in keys)
            shards_read.append({module.train_set._locate(index)[0] for _, index in keys})
        assert set(seen) == set(range(size))  # every image, once, ...
        assert seen.total() - size == 2 * per_pass - size  # ... but the documented padding
        shards = len(module.train_set.shards)
        assert all(len(read) <= shards // 2 + 2 for read in shards_read), shards_read


def test_batches_and_crops_do_not_depend_on_the_worker_count(make_cfg, photos, tmp_path):
    prepared(make_cfg, photos, tmp_path / "shards")
    batches = {}
    for workers in (0, 2):
        module = ShardDataModule(root=str(tmp_path / "shards"), image_size=32, batch_size=3,
                                 num_workers=workers)  # fmt: skip
        module.setup("fit")
        loader = module.train_dataloader()
        batches[workers] = [next(loader) for _ in range(7)]  # past a pass: new crops
        loader.close()
    for zero, two in zip(batches[0], batches[2], strict=True):
        assert torch.equal(zero, two)
    assert not torch.equal(batches[0][0], batches[0][5])


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_a_run_from_shards_extended_by_an_epoch_equals_one_run_straight(make_cfg, photos, tmp_path):
    prepared(make_cfg, photos, tmp_path / "shards")
    args = [*RUN, f"data.root={tmp_path / 'shards'}"]
    straight = train(make_cfg(*args, "trainer.max_epochs=2"))
    (tmp_path / "run").rename(tmp_path / "straight")
    train(make_cfg(*args, "trainer.max_epochs=1"))
    extended = train(make_cfg(*args, "trainer.max_epochs=2", "ckpt_path=last"))
    assert extended["global_step"] == straight["global_step"] == 8  # 2 epochs of 4 batches
    for name, weights in final_weights(tmp_path / "straight").items():
        assert torch.equal(final_weights(tmp_path / "run")[name], weights), name
    assert extended["test/psnr"] == pytest.approx(straight["test/psnr"], rel=1e-6)


def test_a_run_from_shards_stopped_mid_epoch_resumes_with_the_batches_it_had_not_seen(
    make_cfg, photos, tmp_path
):
    prepared(make_cfg, photos, tmp_path / "shards")
    args = [*RUN, f"data.root={tmp_path / 'shards'}", "trainer.max_epochs=2"]
    train(make_cfg(*args))
    (tmp_path / "run").rename(tmp_path / "whole")
    stop = ["trainer.max_steps=5", "callbacks.last.every_n_train_steps=5",
            "callbacks.validate_the_end=null"]  # fmt: skip
    train(make_cfg(*args, *stop))  # saved after step 5: epoch 2, batch 1
    resumed = train(make_cfg(*args, "ckpt_path=last"))
    assert resumed["global_step"] == 8
    for name, weights in final_weights(tmp_path / "whole").items():
        assert torch.equal(final_weights(tmp_path / "run")[name], weights), name


def test_a_damaged_shard_is_named_in_one_line_or_skipped_and_counted(
    make_cfg, main_of, photos, tmp_path
):
    manifest = prepared(make_cfg, photos, tmp_path / "shards")
    shard = tmp_path / "shards" / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:5000])
    args = [*RUN, f"data.root={tmp_path / 'shards'}", "trainer.max_steps=2", "hydra.run.dir=r"]
    assert_one_line_error(main_of("colorizer.run", *args), "train-000001.tar", "5000 bytes",
                          "data.skip_bad_shards=true")  # fmt: skip
    result = main_of("colorizer.run", *args, "data.skip_bad_shards=true")
    assert result.returncode == 0, result.stderr
    lost = manifest["splits"]["train"]["shards"][1]["images"]
    assert f"skipped 1 bad shard ({lost} images): train-000001.tar" in result.stderr


def test_an_image_damaged_after_the_start_stops_the_run_and_keeps_the_checkpoint(
    make_cfg, main_of, photos, tmp_path
):
    """A shard of the right size whose bytes changed passes the start-up check; reading it
    must stop the run in one line, leaving last.ckpt as the last good state."""
    prepared(make_cfg, photos, tmp_path / "shards")
    args = [*RUN, f"data.root={tmp_path / 'shards'}", "hydra.run.dir=r", "data.num_workers=0"]
    assert main_of("colorizer.run", *args, "trainer.max_steps=2").returncode == 0
    last = tmp_path / "r" / "checkpoints" / "last.ckpt"
    before = hashlib.sha256(last.read_bytes()).hexdigest()
    for shard in (tmp_path / "shards").glob("train-*.tar"):
        data = bytearray(shard.read_bytes())
        data[1024:-2048] = bytes(len(data) - 3072)  # the images' bytes zeroed, headers kept
        shard.write_bytes(bytes(data))
    result = main_of("colorizer.run", *args, "trainer.max_steps=4", "ckpt_path=last")
    assert_one_line_error(result, "shard", "cannot be read", "data.skip_bad_shards=true")
    assert hashlib.sha256(last.read_bytes()).hexdigest() == before


def test_a_shard_found_unreadable_while_training_can_be_skipped(
    make_cfg, main_of, photos, tmp_path
):
    manifest = prepared(make_cfg, photos, tmp_path / "shards")
    shard = tmp_path / "shards" / "train-000002.tar"
    data = bytearray(shard.read_bytes())
    data[1024:-2048] = bytes(len(data) - 3072)
    shard.write_bytes(bytes(data))
    args = [*RUN, f"data.root={tmp_path / 'shards'}", "data.num_workers=0", "trainer.max_epochs=1"]
    result = main_of("colorizer.run", *args, "data.skip_bad_shards=true", "hydra.run.dir=r")
    assert result.returncode == 0, result.stderr
    lost = manifest["splits"]["train"]["shards"][2]["images"]
    assert f"skipped shard {tmp_path / 'shards'}/train-000002.tar ({lost} images)" in result.stderr


def damage_one_image(shard: Path) -> None:
    """Overwrite the bytes of the shard's second JPEG (same size: the shard passes its
    start-up check, its tar headers stay readable)."""
    import tarfile

    with tarfile.open(shard) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".jpg")][1]
    data = bytearray(shard.read_bytes())
    data[member.offset_data : member.offset_data + member.size] = bytes(member.size)
    shard.write_bytes(bytes(data))


def test_a_skipped_image_leaves_batches_independent_of_workers_and_resumes(
    make_cfg, photos, tmp_path, caplog
):
    prepared(make_cfg, photos, tmp_path / "shards")
    damage_one_image(tmp_path / "shards" / "train-000001.tar")
    streams = {}
    for workers, start in ((0, 0), (2, 0), (2, 4)):
        module = ShardDataModule(root=str(tmp_path / "shards"), image_size=32, batch_size=3,
                                 num_workers=workers, skip_bad_shards=True)  # fmt: skip
        module.setup("fit")
        module.batches_trained = start
        loader = module.train_dataloader()
        streams[workers, start] = [next(loader) for _ in range(9 - start)]
        loader.close()
    for batch in range(9):
        assert torch.equal(streams[0, 0][batch], streams[2, 0][batch]), batch
    for batch in range(4, 9):
        assert torch.equal(streams[2, 4][batch - 4], streams[0, 0][batch]), batch
    assert "skipped image 1 of" in caplog.text and "train-000001.tar" in caplog.text


def test_image_size_above_the_prepared_one_is_refused(make_cfg, main_of, photos, tmp_path):
    prepared(make_cfg, photos, tmp_path / "shards")
    result = main_of("colorizer.run", *RUN, f"data.root={tmp_path / 'shards'}",
                     "data.image_size=64", "trainer.max_steps=1")  # fmt: skip
    assert_one_line_error(result, "data.image_size=64", "prepared for image_size up to 32")


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [("data.cache_limit_gb=0", "data.cache_limit_gb=0 must be a positive number"),
     ("data.shuffle_shards=0", "data.shuffle_shards=0 must be an integer >= 1")],
)  # fmt: skip
def test_bad_shard_settings_are_one_line(main_of, tmp_path, setting, fragment):
    result = main_of("colorizer.run", *RUN, f"data.root={tmp_path}", setting, "trainer.max_steps=1")
    assert_one_line_error(result, fragment)


def test_a_folder_never_prepared_says_how_to_prepare_it(main_of, tmp_path):
    result = main_of("colorizer.run", *RUN, f"data.root={tmp_path}", "trainer.max_steps=1")
    assert_one_line_error(result, "no manifest.json", "python -m colorizer.prepare")


def test_evaluate_and_colorize_read_shards(make_cfg, main_of, photos, tmp_path):
    manifest = prepared(make_cfg, photos, tmp_path / "shards")
    run = main_of("colorizer.run", *RUN, f"data.root={tmp_path / 'shards'}", "trainer.max_steps=2",
                  "hydra.run.dir=r")  # fmt: skip
    assert run.returncode == 0, run.stderr
    trained = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert 0 < trained["time_to_first_batch_s"] < 60  # set-up: the manifest, the shard list
    checkpoint = tmp_path / "r" / "checkpoints" / "last.ckpt"
    scored = main_of("colorizer.evaluate", f"ckpt_path={checkpoint}", "data=shards",
                     f"data.root={tmp_path / 'shards'}", "hydra.run.dir=e")  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["num_images"] == manifest["splits"]["test"]["images"]
    done = main_of("colorizer.colorize", f"ckpt_path={checkpoint}",
                   f"input={tmp_path / 'shards'}", "output=out", "hydra.run.dir=c")  # fmt: skip
    assert done.returncode == 0, done.stderr
    every = extract_split(str(tmp_path / "shards"), "all", tmp_path / "all")
    assert every == manifest["images"] == len(list((tmp_path / "all").iterdir()))
    expected = set(shard_sources(tmp_path / "shards", "test"))
    written = {path.name for path in (tmp_path / "out").iterdir()}
    assert written == expected


def test_a_photo_folder_with_another_programs_manifest_is_not_taken_for_shards(tmp_path):
    (tmp_path / "manifest.json").write_text('{"app": "scanner"}')
    assert not is_shard_source(str(tmp_path))
    assert not is_shard_source(str(tmp_path / "nowhere"))
    assert is_shard_source("s3://bucket/prefix")


# --- S3 ----------------------------------------------------------------------------------------


def s3_args(server, url: str, cache: Path, *extra: str) -> list[str]:
    return [
        *RUN, f"data.root={url}", f"data.endpoint_url={server.endpoint}",
        f"data.cache_dir={cache}", "trainer.max_steps=2", "hydra.run.dir=r", *extra,
    ]  # fmt: skip


def test_training_reads_a_bucket_through_a_bounded_cache(
    make_cfg, main_of, photos, tmp_path, s3_server
):
    manifest = prepared(make_cfg, photos, tmp_path / "shards")
    url = s3_server.upload(tmp_path / "shards", "photos", "prepared/v1")
    shard_bytes = max(s["bytes"] for s in manifest["splits"]["train"]["shards"])
    limit = 1.5 * shard_bytes / 1e9  # room for one shard: each new one evicts the others
    two_epochs = ["trainer.max_epochs=2", "trainer.max_steps=-1"]
    args = s3_args(s3_server, url, tmp_path / "cache", f"data.cache_limit_gb={limit}", *two_epochs)
    result = main_of("colorizer.run", *args)
    assert result.returncode == 0, result.stderr
    (folder,) = (tmp_path / "cache").iterdir()  # a folder per dataset
    assert folder.name.startswith("photos-")
    cached = list(folder.glob("*.tar"))
    assert len(cached) >= 1 and sum(p.stat().st_size for p in cached) <= 2 * shard_bytes
    assert not list(folder.glob(".*.partial"))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_bucket_errors_are_one_line_naming_the_endpoint_before_training(
    make_cfg, main_of, photos, tmp_path, s3_server, monkeypatch
):
    prepared(make_cfg, photos, tmp_path / "shards")
    url = s3_server.upload(tmp_path / "shards", "photos", "v1")
    cache = tmp_path / "cache"
    missing = main_of("colorizer.run", *s3_args(s3_server, "s3://no-such-bucket/v1", cache))
    assert_one_line_error(missing, "bucket no-such-bucket does not exist", s3_server.endpoint)
    nowhere = f"http://127.0.0.1:{closed_port()}"
    unreachable = main_of("colorizer.run", *s3_args(s3_server, url, cache),
                          f"data.endpoint_url={nowhere}")  # fmt: skip
    assert_one_line_error(unreachable, f"cannot reach the S3 endpoint {nowhere}")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    refused = main_of("colorizer.run", *s3_args(s3_server, url, cache))
    assert_one_line_error(refused, s3_server.endpoint, "refused the credentials",
                          "SignatureDoesNotMatch")  # fmt: skip
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing trained


def test_a_shard_damaged_in_the_bucket_is_never_cached(
    make_cfg, main_of, photos, tmp_path, s3_server
):
    prepared(make_cfg, photos, tmp_path / "shards")
    shard = tmp_path / "shards" / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    url = s3_server.upload(tmp_path / "shards", "photos", "v1")
    result = main_of("colorizer.run", *s3_args(s3_server, url, tmp_path / "cache"),
                     "data.num_workers=0")  # fmt: skip
    assert_one_line_error(result, f"{url}/train-000000.tar is damaged", "upload the shard again")
    assert (tmp_path / "cache").exists()  # it was downloaded, then refused
    assert not list((tmp_path / "cache").rglob("*train-000000.tar"))


@pytest.mark.slow
def test_two_ddp_processes_train_on_every_image_of_a_bucket_once_per_epoch(
    cli, make_cfg, photos, tmp_path, s3_server, monkeypatch
):
    prepared(make_cfg, photos, tmp_path / "shards", "shard_images=2")
    url = s3_server.upload(tmp_path / "shards", "photos", "v1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the processes import the probe from tests
    args = [
        *s3_args(s3_server, url, tmp_path / "cache"), "trainer=ddp", "trainer.devices=2",
        "trainer.accelerator=cpu", "trainer.max_epochs=2", "trainer.max_steps=-1",
        "data.shuffle_shards=2", "+callbacks.keys._target_=tests.helpers.StreamKeysProbe",
        "+callbacks.keys.dirpath=${paths.output_dir}",
    ]  # fmt: skip
    result = cli("colorizer.run", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    train_images = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    size = train_images["splits"]["train"]["images"]
    per_rank = -(-size // 2)
    batches = max(1, int(per_rank / 3 + 0.5))  # an epoch: the nearest whole number to a pass
    keys = {}
    for rank in (0, 1):
        lines = (tmp_path / "r" / f"keys-rank{rank}.jsonl").read_text().splitlines()
        keys[rank] = [tuple(key) for line in lines for key in json.loads(line)]
    for rank in (0, 1):
        assert len(keys[rank]) == 2 * batches * 3
    first_pass = Counter(i for rank in (0, 1) for e, i in keys[rank] if e == 0)
    assert set(first_pass) == set(range(size)), first_pass
    assert first_pass.total() - size == 2 * per_rank - size


# --- A URL list --------------------------------------------------------------------------------


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def test_a_url_list_goes_to_shards_without_a_file_per_url(make_cfg, tmp_path):
    sideways = Image.Exif()
    sideways[0x0112] = 6  # "rotate 90 CW to view": upright it is taller than wide
    routes = {f"/p{i}.jpg": Response(body=jpeg(colour_photo(96, 72, seed=i))) for i in range(8)}
    routes["/sideways.jpg"] = Response(body=jpeg(colour_photo(120, 80, seed=9), exif=sideways))
    routes["/gray.jpg"] = Response(body=jpeg(colour_photo(90, 90, seed=10).convert("L")))
    with ImageServer(routes) as server:
        urls = [server.url(path) for path in [*routes, "/missing.jpg"]]
        (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
        cfg = make_cfg("data=internet", f"data.urls={tmp_path / 'urls.txt'}", *SIZE,
                       "data.threads=4", f"data.cache_dir={tmp_path / 'cache'}",
                       f"output={tmp_path / 'shards'}", "shard_images=4",
                       "workers=1", config_name="prepare")  # fmt: skip
        manifest = prepare(cfg)
    download = tmp_path / "cache" / "tars"
    assert not [p for p in download.rglob("*.jpg")]  # img2dataset's own tars, no file per URL
    assert list(download.glob("*.tar"))
    assert manifest["skipped"] == {"grayscale": 1}
    sources = [url for split in ("train", "val", "test") for url in
               shard_sources(tmp_path / "shards", split)]  # fmt: skip
    assert sorted(sources) == sorted(url for url in urls[:9])
    train_set = wds.WebDataset(sorted(str(p) for p in (tmp_path / "shards").glob("*.tar")),
                               shardshuffle=False)  # fmt: skip
    for sample in train_set:
        if json.loads(sample["json"])["source"].endswith("/sideways.jpg"):
            upright = Image.open(io.BytesIO(sample["jpg"]))
            assert upright.height > upright.width
