"""Tiny real image files for the datamodule tests (written into tmp_path, never mocked)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import colour_photo, truncated_jpeg_bytes


@pytest.fixture
def make_photo() -> Callable[..., Image.Image]:
    return colour_photo


@pytest.fixture
def truncated_jpeg() -> bytes:
    return truncated_jpeg_bytes()


@pytest.fixture
def write_photos() -> Callable[..., list[Path]]:
    """``write_photos(folder, names, size=(48, 40))``: one distinct colour photo per name."""

    def write(folder: Path, names: Iterable[str], size: tuple[int, int] = (48, 40)) -> list[Path]:
        paths = []
        for name in names:
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            # The seed comes from the name, so the same name always holds the same picture.
            seed = sum(ord(c) * (i + 1) for i, c in enumerate(name))
            colour_photo(*size, seed=seed).save(path)
            paths.append(path)
        return paths

    return write


@dataclass(frozen=True)
class S3Server:
    """A real S3 server (moto's) on 127.0.0.1 that checks credentials, and a user's keys."""

    endpoint: str
    key: str
    secret: str

    def client(self, key: str | None = None, secret: str | None = None):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=key or self.key, aws_secret_access_key=secret or self.secret,
        )  # fmt: skip

    def upload(self, folder: Path, bucket: str, prefix: str) -> str:
        """Every file of ``folder`` under ``s3://bucket/prefix/``; returns that URL."""
        client = self.client()
        client.create_bucket(Bucket=bucket)
        for path in sorted(folder.iterdir()):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
        return f"s3://{bucket}/{prefix}"


@pytest.fixture
def s3_server(monkeypatch) -> Iterator[S3Server]:
    """moto's server in this process (a thread), with authentication on: an IAM user allowed
    s3:* is made first, then unsigned or wrongly signed requests are refused. The processes a
    test starts reach it over HTTP; the user's keys are in this process's environment."""
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="setup", aws_secret_access_key="setup")  # fmt: skip
    iam.create_user(UserName="trainer")
    policy = {"Version": "2012-10-17",
              "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}  # fmt: skip
    iam.put_user_policy(UserName="trainer", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="trainer")["AccessKey"]
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=5).raise_for_status()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:  # authentication and the stored objects are moto's globals: put them back
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=5)
        requests.post(f"{endpoint}/moto-api/reset", timeout=5)
        server.stop()
