"""infra.store.Store on ``s3://`` against real S3-compatible servers on 127.0.0.1: moto's, and
SeaweedFS where credentials must be checked.

Credentials come from the standard AWS environment variables only; ``storage_options`` carries the
endpoint and nothing secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from pydantic import BaseModel

from tests.s3_server import (
    CREDENTIAL_STRINGS,
    MotoS3Server,
    SeaweedS3Server,
    bucket_objects,
    new_bucket,
    set_credentials,
)
from ultrafeedback.infra.store import Store, StoreUnavailable, arrow_schema


class Row(BaseModel):
    key: str
    value: int
    tags: list[str]
    note: str | None = None


@pytest.fixture(scope="module")
def s3_server() -> Iterator[MotoS3Server]:
    with MotoS3Server() as server:
        yield server


@pytest.fixture
def s3(s3_server: MotoS3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fresh bucket on the server; credentials in the environment."""
    set_credentials(monkeypatch)
    bucket = new_bucket(s3_server.endpoint_url)
    return {
        "bucket": bucket,
        "endpoint_url": s3_server.endpoint_url,
        "options": {"endpoint_url": s3_server.endpoint_url},
    }


@pytest.fixture
def store(s3: dict[str, Any]) -> Store:
    return Store(f"s3://{s3['bucket']}/prefix/", "ds", s3["options"])


def test_paths_and_uri(store: Store, s3: dict[str, Any]) -> None:
    bucket = s3["bucket"]
    assert not store.local
    assert store.url == f"s3://{bucket}/prefix"
    assert store.root == f"{bucket}/prefix/ds"
    assert store.path("scored", "a.parquet") == f"{bucket}/prefix/ds/scored/a.parquet"
    assert store.uri("releases", "v1") == f"s3://{bucket}/prefix/ds/releases/v1"
    assert store.uri() == f"s3://{bucket}/prefix/ds"
    assert store.storage_options == s3["options"]
    assert not any(secret in repr(store.storage_options) for secret in CREDENTIAL_STRINGS)


def test_table_round_trip_is_one_object_at_the_key(store: Store, s3: dict[str, Any]) -> None:
    table = pa.table({"id": ["a", "b", "c"], "score": [1.5, None, 3.0], "tags": [["x"], [], ["y", "z"]]})
    path = store.write_table("stage/table.parquet", table)
    assert path == store.path("stage/table.parquet")
    assert store.read_table("stage/table.parquet").equals(table)
    # exactly the object, no temporary or marker objects beside it
    assert list(bucket_objects(s3["endpoint_url"], s3["bucket"])) == ["prefix/ds/stage/table.parquet"]


def test_json_round_trip_and_default(store: Store) -> None:
    assert store.read_json("gates/ingest.json") is None
    assert store.read_json("gates/ingest.json", default={"none": True}) == {"none": True}
    obj = {"passed": True, "checks": [{"name": "rows", "passed": True}], "ratio": 0.5}
    store.write_json("gates/ingest.json", obj)
    assert store.read_json("gates/ingest.json") == obj
    store.write_json("gates/ingest.json", {"passed": False})
    assert store.read_json("gates/ingest.json") == {"passed": False}


def test_exists_ls_and_delete(store: Store) -> None:
    assert not store.exists("stage")
    assert store.ls("stage") == []
    assert store.ls() == []
    store.write_json("stage/b.json", {})
    store.write_json("stage/a.json", {})
    store.write_json("stage/sub/c.json", {})
    store.write_json("other/d.json", {})
    assert store.exists("stage") and store.exists("stage/a.json") and store.exists("stage", "sub", "c.json")
    assert not store.exists("stage/missing.json")
    assert store.ls("stage") == ["a.json", "b.json", "sub"]
    assert store.ls() == ["other", "stage"]

    store.delete("stage/a.json")
    assert not store.exists("stage/a.json")
    assert store.ls("stage") == ["b.json", "sub"]
    store.delete("stage")  # a folder, recursively
    assert not store.exists("stage") and store.ls("stage") == []
    assert store.ls() == ["other"]
    store.delete("never/written.json")  # deleting what does not exist is a no-op


def test_result_log_append_read_keys_replace(store: Store) -> None:
    log = store.results("completions", Row, key="key")
    assert log.parts() == []
    assert log.read().schema == arrow_schema(Row) and log.read().num_rows == 0
    assert log.keys() == set()
    assert log.append([]) is None

    first = log.append([Row(key="a", value=1, tags=["x"]), Row(key="b", value=2, tags=[])])
    assert first is not None and first.startswith(store.path("completions") + "/")
    assert first.endswith(".parquet") and "-part-" in first
    log.append([Row(key="b", value=20, tags=["late"], note="rewritten"), Row(key="c", value=3, tags=[])], label="retry")
    assert len(log.parts()) == 2
    assert log.keys() == {"a", "b", "c"}
    rows = {r["key"]: r for r in log.rows()}
    assert rows["b"] == {"key": "b", "value": 20, "tags": ["late"], "note": "rewritten"}  # last write wins
    assert log.read(["key"]).column_names == ["key"]
    assert log.read().schema == arrow_schema(Row)

    log.replace([Row(key="z", value=26, tags=[])], label="all")
    parts = log.parts()
    assert len(parts) == 1 and parts[0].split("-")[1] == "all"
    assert log.rows() == [{"key": "z", "value": 26, "tags": [], "note": None}]


def test_a_new_store_sees_objects_written_by_another_client(store: Store, s3: dict[str, Any]) -> None:
    """fsspec shares one s3fs instance per process and s3fs caches listings: objects written by
    another process after a listing must still be seen (a rerun or refresh in a long-lived worker
    would otherwise redo stored work and publish from partial data)."""
    log = store.results("completions", Row, key="key")
    log.append([Row(key="a", value=1, tags=[])])
    assert log.keys() == {"a"} and not store.exists("gates/ingest.json")

    # a separate client, as another process or machine would have (not fsspec's cached instance)
    writer = Store(f"s3://{s3['bucket']}/prefix", "ds", {**s3["options"], "skip_instance_cache": True})
    assert writer.fs is not store.fs
    writer.results("completions", Row, key="key").append([Row(key="b", value=2, tags=[])])
    writer.write_json("gates/ingest.json", {"passed": True})

    again = Store(f"s3://{s3['bucket']}/prefix", "ds", s3["options"])
    assert again.results("completions", Row, key="key").keys() == {"a", "b"}
    assert store.exists("gates/ingest.json")
    assert again.read_json("gates/ingest.json") == {"passed": True}

    writer.delete("gates/ingest.json")
    assert not store.exists("gates/ingest.json")
    assert store.read_json("gates/ingest.json", default="gone") == "gone"


def test_credentials_only_from_the_environment(store: Store, s3: dict[str, Any]) -> None:
    store.write_json("x/settings.json", {"storage_options": store.storage_options, "url": store.url})
    for key, data in bucket_objects(s3["endpoint_url"], s3["bucket"]).items():
        for secret in CREDENTIAL_STRINGS:
            assert secret.encode() not in data, f"credential in {key}"
    # nothing secret was passed to s3fs: it signs with what botocore finds in the environment
    assert store.fs.key is None and store.fs.secret is None and store.fs.token is None


# --------------------------------------------------------------------------- the probe


@pytest.fixture(scope="module")
def seaweed() -> Iterator[SeaweedS3Server]:
    with SeaweedS3Server() as server:
        yield server


def test_probe_leaves_nothing_behind(store: Store, s3: dict[str, Any]) -> None:
    store.probe()
    assert bucket_objects(s3["endpoint_url"], s3["bucket"]) == {}


def test_probe_of_a_missing_bucket_names_store(s3: dict[str, Any]) -> None:
    store = Store("s3://uf-no-such-bucket/prefix", "ds", s3["options"])
    with pytest.raises(StoreUnavailable, match=r"^store: cannot write to s3://uf-no-such-bucket/prefix/ds: "):
        store.probe()


def test_probe_with_the_right_key_on_a_server_that_checks_keys(
    seaweed: SeaweedS3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_credentials(monkeypatch)
    bucket = new_bucket(seaweed.endpoint_url)
    Store(f"s3://{bucket}/prefix", "ds", {"endpoint_url": seaweed.endpoint_url}).probe()
    assert bucket_objects(seaweed.endpoint_url, bucket) == {}


def test_probe_with_a_wrong_secret_key_is_refused_and_names_store(
    seaweed: SeaweedS3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_credentials(monkeypatch)
    bucket = new_bucket(seaweed.endpoint_url)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = Store(f"s3://{bucket}/prefix", "ds", {"endpoint_url": seaweed.endpoint_url, "skip_instance_cache": True})
    with pytest.raises(StoreUnavailable) as caught:
        store.probe()
    assert str(caught.value).startswith(f"store: cannot write to s3://{bucket}/prefix/ds: PermissionError: ")
    set_credentials(monkeypatch)
    assert bucket_objects(seaweed.endpoint_url, bucket) == {}
