"""Fakes of the outside world for tests and `make perf`: S3 through moto in server mode (a real
HTTP endpoint on 127.0.0.1, so boto3's transfer manager, retries and multipart uploads run
as they would against AWS), and the helpers to build clients for it."""

from __future__ import annotations

import atexit
import contextlib
import logging
from collections.abc import Iterator

FAKE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
                    "region_name": "us-east-1"}


_shared: dict[str, object] = {}  # this process's moto server: {"server": ..., "url": ...}


def shared_moto_url() -> str:
    """The endpoint URL of this process's one moto server, started on first use.

    moto keeps its state per process, not per server, so a second server in one process would
    only be a second door to the same state; and stopping one costs about a second (werkzeug's
    shutdown poll). So a session (or an xdist worker) starts one, and each user resets it."""
    if "url" not in _shared:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()  # a daemon thread: it cannot outlive the process
        host, port = server.get_host_and_port()
        _shared.update(server=server, url=f"http://{host}:{port}")
        atexit.register(stop_shared_moto)
    return str(_shared["url"])


def stop_shared_moto() -> None:
    server = _shared.pop("server", None)
    _shared.pop("url", None)
    if server is not None:
        server.stop()


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto server holding nothing; yields its endpoint URL. It is the process's shared one
    (shared_moto_url), reset through moto's reset API on entry and on exit."""
    url = shared_moto_url()
    reset(url)
    try:
        yield url
    finally:
        reset(url)


def reset(url: str) -> None:
    import httpx

    httpx.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()


def session():
    import boto3

    return boto3.Session(**FAKE_CREDENTIALS)


def s3_client(endpoint_url: str):
    return session().client("s3", endpoint_url=endpoint_url)


def no_aws(monkeypatch, tmp_path, region: str = "us-east-1") -> None:
    """Fake credentials, no profile or config files, and every endpoint an address that
    refuses connections: a request a Stubber did not expect fails at once instead of reaching
    AWS or the developer's own account."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": region,
                 "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                 "AWS_CONFIG_FILE": str(tmp_path / "none"),
                 "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
