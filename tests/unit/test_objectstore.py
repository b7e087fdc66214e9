"""Objects by URI (parsing, S3 errors by intent), the feedback export target, and what an
unreadable drift reference raises. No S3 server: botocore's Stubber answers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from botocore.stub import Stubber

from controller.drift_monitor import DriftMonitor
from controller.failures import ModelUnreadable, StorageUnavailable, classify
from controller.feedback import export_uri
from controller.objectstore import (
    Location,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    is_transient,
    join,
    parse,
)
from controller.settings import Settings


@pytest.mark.parametrize(("uri", "loc"), [
    ("/m/1/reference.json", Location("file", path="/m/1/reference.json")),
    ("rel/ref.json", Location("file", path="rel/ref.json")),
    ("file:///m/a%20b/ref.json", Location("file", path="/m/a b/ref.json")),
    ("file://localhost/m/ref.json", Location("file", path="/m/ref.json")),
    ("s3://trellis/metaflow/models/PumpkinFlow/7/reference.json",
     Location("s3", bucket="trellis", key="metaflow/models/PumpkinFlow/7/reference.json")),
    (" s3://b/k ", Location("s3", bucket="b", key="k")),
])
def test_parse(uri: str, loc: Location) -> None:
    assert parse(uri) == loc


@pytest.mark.parametrize(("uri", "says"), [
    ("", "empty"), ("s3://bucket-only", "bucket and a key"), ("s3:///key", "bucket and a key"),
    ("http://h/x", "not http://"), ("file://otherhost/x", "another host"),
])
def test_parse_refuses(uri: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse(uri)


def test_join() -> None:
    assert join("s3://b/mf/", "feedback", "/ns/", "e.npz") == "s3://b/mf/feedback/ns/e.npz"


@pytest.mark.parametrize(("code", "status", "transient"), [
    ("SlowDown", 503, True), ("InternalError", 500, True), ("RequestTimeout", 400, True),
    ("", 502, True), ("TooManyRequests", 429, True), ("AccessDenied", 403, False),
    ("InvalidAccessKeyId", 403, False), ("NoSuchKey", 404, False), ("InvalidRequest", 400, False),
])
def test_is_transient(code: str, status: int, transient: bool) -> None:
    assert is_transient(code, status) is transient


@pytest.mark.parametrize(("backend", "expected"), [
    ("kubernetes", "s3://trellis/metaflow/feedback/farm/classifier/ep-3.npz"),
    ("local", "/state/feedback/farm/classifier/ep-3.npz"),
])
def test_feedback_goes_where_the_retrain_runs(backend: str, expected: str) -> None:
    assert export_uri(backend=backend, s3_root="s3://trellis/metaflow/", state_dir=Path("/state"),
                      namespace="farm", deployment="classifier", episode="ep-3") == expected


def test_feedback_for_a_pod_needs_an_s3_root() -> None:
    with pytest.raises(ValueError, match="TRELLIS_DATASTORE_S3_ROOT"):
        export_uri(backend="kubernetes", s3_root="", state_dir=Path("/s"), namespace="n",
                   deployment="d", episode="e")


def test_local_objects_round_trip(tmp_path: Path) -> None:
    store = ObjectStore()
    target = tmp_path / "a" / "b.json"
    store.write(target.as_uri(), b"{}")
    assert store.read(str(target)) == b"{}" and [p.name for p in target.parent.iterdir()] == [
        "b.json"]  # no temporary file left
    with pytest.raises(ObjectNotFound, match="no such file"):
        store.read(str(tmp_path / "missing"))


def test_local_listing_and_deleting(tmp_path: Path) -> None:
    store = ObjectStore()
    for name in ("d/b/2.json", "d/a.json", "other.json"):
        store.write(str(tmp_path / name), b"x")
    (tmp_path / "d" / ".a.json.123.tmp").write_bytes(b"half")  # a write under way
    assert store.list(str(tmp_path / "d")) == [str(tmp_path / "d/a.json"),
                                                str(tmp_path / "d/b/2.json")]
    assert store.list(str(tmp_path / "nothing-here")) == []
    store.delete([str(tmp_path / "d/a.json"), str(tmp_path / "d/gone.json")])
    assert store.list(str(tmp_path / "d")) == [str(tmp_path / "d/b/2.json")]


@pytest.mark.usefixtures("aws_env")
def test_s3_listing_pages_and_deleting_in_batches() -> None:
    store = ObjectStore("http://127.0.0.1:9")
    stub = Stubber(store.client())
    stub.add_response("list_objects_v2", {"Contents": [{"Key": "rl/inbox/a"}],
                                          "IsTruncated": True, "NextContinuationToken": "t"},
                      {"Bucket": "b", "Prefix": "rl/inbox/"})
    stub.add_response("list_objects_v2", {"Contents": [{"Key": "rl/inbox/b"}],
                                          "IsTruncated": False},
                      {"Bucket": "b", "Prefix": "rl/inbox/", "ContinuationToken": "t"})
    stub.add_response("delete_objects", {"Errors": [{"Key": "rl/inbox/a", "Code": "SlowDown",
                                                     "Message": "busy"}]})
    with stub:
        assert store.list("s3://b/rl/inbox") == ["s3://b/rl/inbox/a", "s3://b/rl/inbox/b"]
        with pytest.raises(ObjectStoreError, match="SlowDown") as err:
            store.delete(["s3://b/rl/inbox/a", "s3://b/rl/inbox/b"])
    assert err.value.transient


def stubbed(store: ObjectStore, code: str, status: int) -> Stubber:
    """The store's client answering its next get_object with an S3 error."""
    client = store.client()
    stub = Stubber(client)
    stub.add_client_error("get_object", service_error_code=code, http_status_code=status,
                          service_message=f"{code} says no")
    stub.activate()
    return stub


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.mark.usefixtures("aws_env")
@pytest.mark.parametrize(("code", "status", "error", "transient"), [
    ("NoSuchKey", 404, ObjectNotFound, False),
    ("AccessDenied", 403, ObjectStoreError, False),
    ("SlowDown", 503, ObjectStoreError, True),
])
def test_s3_errors_by_intent(code: str, status: int, error: type, transient: bool) -> None:
    store = ObjectStore("http://127.0.0.1:9")
    with stubbed(store, code, status), pytest.raises(error) as err:
        store.read("s3://trellis/metaflow/models/F/1/reference.json")
    assert err.value.transient is transient and code in str(err.value)


def test_no_credentials_is_said_plainly(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(ObjectStoreError, match=r"no S3 credentials.*trellis-s3") as err:
        ObjectStore("http://127.0.0.1:9").read("s3://b/k")
    assert not err.value.transient


def monitor(endpoint: str = "http://127.0.0.1:9") -> DriftMonitor:
    return DriftMonitor(SimpleNamespace(settings=Settings(s3_endpoint_url=endpoint)))  # type: ignore[arg-type]


def reference_error(mon: DriftMonitor, uri: str) -> Exception:
    with pytest.raises(Exception) as err:  # the caller checks the type
        asyncio.run(mon._reference(("ns", "classifier"), uri, 3))
    return err.value


def test_unreadable_references_are_failures_with_reasons(tmp_path: Path) -> None:
    missing = reference_error(monitor(), str(tmp_path / "reference.json"))
    assert isinstance(missing, ModelUnreadable) and str(missing) == (
        f"the drift reference of model v3 ({tmp_path / 'reference.json'}) cannot be read: "
        "no such file")
    assert classify(missing).permanent
    bad = reference_error(monitor(), "gs://b/reference.json")
    assert isinstance(bad, ModelUnreadable) and "not gs://" in str(bad)
    (tmp_path / "junk.json").write_text("{not json")
    assert isinstance(reference_error(monitor(), str(tmp_path / "junk.json")), ModelUnreadable)


@pytest.mark.usefixtures("aws_env")
def test_a_busy_store_is_transient_and_a_refusal_is_not() -> None:
    mon = monitor()
    with stubbed(mon.store, "ServiceUnavailable", 503):
        busy = reference_error(mon, "s3://trellis/m/reference.json")
    assert isinstance(busy, StorageUnavailable) and not classify(busy).permanent
    assert classify(busy).reason == "StorageUnavailable"
    with stubbed(mon.store, "AccessDenied", 403):
        refused = reference_error(mon, "s3://trellis/m/reference.json")
    assert isinstance(refused, ModelUnreadable) and "AccessDenied" in str(refused)
