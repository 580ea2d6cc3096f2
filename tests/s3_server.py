"""A real S3-compatible server for tests: moto's server in a subprocess on 127.0.0.1.

A subprocess rather than moto's ``ThreadedMotoServer``: it has its own interpreter (no GIL shared
with the build under test, no moto state or botocore hooks in the test process) and it is stopped
by its process id, so a test that fails cannot leave a server thread behind.

Credentials reach s3fs only through the standard environment variables (``s3_env``), never through
``storage_options``: that is how a spec is meant to run (secrets are never written in a spec), and
it lets a test check that no credential was written anywhere. moto accepts any key, so the values
are arbitrary but distinctive, to be searched for in what the store wrote.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "AKIAUFTESTACCESS0042"
SECRET_KEY = "uf-test-secret-key-DO-NOT-LEAK-9f3c1e"
REGION = "us-east-1"
CREDENTIAL_STRINGS: tuple[str, ...] = (ACCESS_KEY, SECRET_KEY)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _moto_server_command(port: int) -> list[str]:
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if exe is None:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return [exe, "-H", "127.0.0.1", "-p", str(port)]


class MotoS3Server:
    """``moto_server`` bound to 127.0.0.1 on a free port; a context manager that stops what it
    started (its own process, by id)."""

    def __init__(self, startup_timeout_s: float = 30.0, attempts: int = 3) -> None:
        self.startup_timeout_s = startup_timeout_s
        self.attempts = attempts
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3Server:
        last_error = ""
        for _ in range(self.attempts):
            # A free port can be taken between probing and binding: try again on another one.
            self.port = _free_port()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self._log = open(os.devnull, "wb")  # noqa: SIM115 - closed in stop()
            self.process = subprocess.Popen(
                _moto_server_command(self.port), stdout=self._log, stderr=subprocess.PIPE, env=env
            )
            deadline = time.monotonic() + self.startup_timeout_s
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    last_error = (self.process.stderr.read() if self.process.stderr else b"").decode()[-2000:]
                    break
                if self._ready():
                    # stderr is only read at startup; drain nothing more and avoid a full pipe.
                    if self.process.stderr is not None:
                        self.process.stderr.close()
                    return self
                time.sleep(0.1)
            else:
                last_error = f"no answer within {self.startup_timeout_s} s"
            self.stop()
        raise RuntimeError(f"moto_server did not start on 127.0.0.1: {last_error}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process is not None and process.stderr is not None and not process.stderr.closed:
            process.stderr.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MotoS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def set_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The AWS credentials as environment variables only; no profile or config file can interfere."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    # Not region_name in storage_options: with it, s3fs's bucket creation fails (reference notes).
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def s3fs_for(endpoint_url: str) -> Any:
    """A fresh (uncached) s3fs file system on the server, credentials from the environment."""
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint_url, skip_instance_cache=True)


def new_bucket(endpoint_url: str, prefix: str = "uf") -> str:
    """Create a bucket with a unique name (so tests sharing a server never see each other)."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    s3fs_for(endpoint_url).mkdir(name)
    return name


def bucket_objects(endpoint_url: str, bucket: str) -> dict[str, bytes]:
    """Every object in the bucket, by key (path without the bucket), read fresh from the server."""
    fs = s3fs_for(endpoint_url)
    return {path.split("/", 1)[1]: fs.cat_file(path) for path in fs.find(bucket)}
