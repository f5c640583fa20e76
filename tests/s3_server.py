"""A real S3-compatible server for tests: moto's ``moto_server`` on 127.0.0.1, started as a subprocess.

Usage::

    from s3_server import run_moto_server, s3_env, create_bucket   # tests/ is on sys.path under pytest

    with run_moto_server() as endpoint:               # "http://127.0.0.1:PORT"
        for k, v in s3_env(endpoint).items():
            monkeypatch.setenv(k, v)                  # AWS_ENDPOINT_URL + dummy keys + region
        create_bucket(endpoint, "e2i-test")
        ...  # s3://e2i-test/... paths now work with pyarrow.fs / boto3 / Ray

The server holds everything in memory and is terminated (then killed if needed) on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _moto_executable() -> str:
    beside = Path(sys.executable).with_name("moto_server")
    exe = str(beside) if beside.exists() else shutil.which("moto_server")
    if not exe:
        raise RuntimeError("moto_server not found: install the dev extras (moto[server])")
    return exe


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            return
        except urllib.error.HTTPError:  # any HTTP answer means the server is up
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on {url} within {timeout:.0f} s")


@contextlib.contextmanager
def run_moto_server(host: str = "127.0.0.1", timeout: float = 30.0) -> Iterator[str]:
    """Start ``moto_server`` on a free port of ``host``; yield its endpoint URL; stop it on exit."""
    port = _free_port(host)
    url = f"http://{host}:{port}"
    proc = subprocess.Popen([_moto_executable(), "-H", host, "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(url, proc, timeout)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment for clients of the test server (dummy credentials; nothing real is reachable)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }


def create_bucket(endpoint: str, name: str) -> None:
    """Create a bucket on the test server (boto3, dummy credentials)."""
    import boto3

    env = s3_env(endpoint)
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                 region_name=env["AWS_DEFAULT_REGION"]).create_bucket(Bucket=name)


if __name__ == "__main__":  # manual check: python tests/s3_server.py
    with run_moto_server() as ep:
        print("moto_server up at", ep, "pid", os.getpid())
