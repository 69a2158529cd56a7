"""Tests of polydistill.store against a real local directory and a real S3 server (moto on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests
import urllib3
from minio import Minio
from minio.error import S3Error, ServerError

from polydistill.store import (
    MIN_PART_SIZE,
    BucketNotFoundError,
    LocalStore,
    ObjectNotFoundError,
    ObjectStore,
    RetryPolicy,
    S3Settings,
    S3Store,
    StoreAuthError,
    StoreConfigError,
    StoreError,
    StoreUnreachableError,
    join_uri,
    open_store,
    redact,
)
from tests.conftest_store import STORE_ENV_VARS

# s3_server and s3_env come from tests/conftest_store.py, loaded by tests/conftest.py.


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same tests run against a file:// store and an s3:// store."""
    if request.param == "file":
        return open_store((tmp_path / "store").as_uri())
    return open_store(request.getfixturevalue("s3_env"))


@pytest.fixture
def no_store_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in STORE_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def _minio(server: dict[str, str]) -> Minio:
    return Minio(
        server["endpoint"].removeprefix("http://"),
        access_key=server["access_key"],
        secret_key=server["secret_key"],
        secure=False,
    )


# --- both backends -------------------------------------------------------------------------------------


def test_bytes_round_trip(store: ObjectStore) -> None:
    data = bytes(range(256)) * 40
    store.put_bytes("shards/000.bin", data)
    assert store.get_bytes("shards/000.bin") == data
    store.put_bytes("shards/000.bin", b"replaced")
    assert store.get_bytes("shards/000.bin") == b"replaced"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""
    assert store.size("empty") == 0


def test_file_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    store.put_file("models/teacher.pt", src)
    dest = tmp_path / "out" / "deeper" / "teacher.pt"  # parents are created
    store.get_file("models/teacher.pt", dest)
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["teacher.pt"]  # no temp file left behind
    store.get_file("models/teacher.pt", str(dest))  # overwrite, str path
    assert dest.read_bytes() == src.read_bytes()


def test_list_exists_size_delete(store: ObjectStore) -> None:
    keys = ["b/x/y.bin", "a/2", "a/1", "c", "ab"]
    for i, key in enumerate(keys):
        store.put_bytes(key, b"x" * i)
    assert store.list() == sorted(keys)
    assert store.list("a/") == ["a/1", "a/2"]
    assert store.list("a") == ["a/1", "a/2", "ab"]  # a string prefix, as on S3
    assert store.list("b/x/") == ["b/x/y.bin"]
    assert store.list("zzz") == []
    assert store.exists("a/1")
    assert not store.exists("a")  # a "directory" is not an object
    assert not store.exists("nope")
    assert store.size("b/x/y.bin") == 0
    assert store.size("ab") == 4
    store.delete("b/x/y.bin")
    store.delete("b/x/y.bin")  # missing: no error
    store.delete("never/existed")
    assert not store.exists("b/x/y.bin")
    assert store.list() == ["a/1", "a/2", "ab", "c"]
    assert store.list("b") == []


def test_child(store: ObjectStore) -> None:
    child = store.child("buffers", "pong/v1")
    assert child.uri == join_uri(store.uri, "buffers", "pong", "v1")
    child.put_bytes("manifest.json", b"{}")
    assert child.list() == ["manifest.json"]
    assert store.list() == ["buffers/pong/v1/manifest.json"]
    assert store.get_bytes("buffers/pong/v1/manifest.json") == b"{}"
    assert store.child("buffers").child("pong").list() == ["v1/manifest.json"]
    assert type(child) is type(store)


def test_put_files_in_parallel(store: ObjectStore, tmp_path: Path) -> None:
    items = []
    for i in range(12):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(bytes([i]) * (100 + i))
        items.append((f"many/f{i:02d}.bin", path))
    # The first two uploads wait for each other: this only passes if two run at the same time.
    barrier = threading.Barrier(2, timeout=10)
    calls = 0
    lock = threading.Lock()
    real_put_file = store.put_file

    def put_file(key: str, path: str | Path) -> None:
        nonlocal calls
        with lock:
            calls += 1
            first_two = calls <= 2
        if first_two:
            barrier.wait()
        real_put_file(key, path)

    store.put_file = put_file  # type: ignore[method-assign]
    reported: list[int] = []
    store.put_files(items, workers=4, progress=reported.append)
    assert sorted(reported) == sorted(100 + i for i in range(12))
    assert store.list("many/") == sorted(key for key, _ in items)
    assert store.get_bytes("many/f07.bin") == bytes([7]) * 107


def test_put_files_raises_first_error(store: ObjectStore, tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    good.write_bytes(b"ok")
    with pytest.raises(FileNotFoundError):
        store.put_files([("g", good), ("m", tmp_path / "missing.bin")])
    with pytest.raises(StoreConfigError):
        store.put_files([("g", good), ("../escape", good)], workers=2)


def test_missing_object(store: ObjectStore, tmp_path: Path) -> None:
    for call in (
        lambda: store.get_bytes("nope/x.bin"),
        lambda: store.size("nope/x.bin"),
        lambda: store.get_file("nope/x.bin", tmp_path / "dest.bin"),
    ):
        with pytest.raises(ObjectNotFoundError) as info:
            call()
        assert isinstance(info.value, FileNotFoundError)
        assert join_uri(store.uri, "nope/x.bin") in str(info.value)
    assert not (tmp_path / "dest.bin").exists()


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../../x", "a//b", "./a", "", "a\\b", "a/.."])
def test_keys_cannot_escape_root(store: ObjectStore, key: str, tmp_path: Path) -> None:
    for call in (
        lambda: store.put_bytes(key, b"x"),
        lambda: store.get_bytes(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(StoreConfigError, match="relative"):
            call()
    with pytest.raises(StoreConfigError):
        store.child("..")
    with pytest.raises(StoreConfigError):
        store.list("../")
    assert store.list() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == (["store"] if store.local_path() else [])


# --- local store -----------------------------------------------------------------------------------


def test_open_store_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_uri = open_store((tmp_path / "a" / "b").as_uri())
    assert isinstance(by_uri, LocalStore)
    assert by_uri.local_path() == (tmp_path / "a" / "b").resolve()
    assert by_uri.local_path().is_dir()
    assert by_uri.uri == (tmp_path / "a" / "b").resolve().as_uri()
    monkeypatch.chdir(tmp_path)
    by_path = open_store("rel/dir")
    assert by_path.local_path() == (tmp_path / "rel" / "dir").resolve()
    by_path.put_bytes("k", b"v")
    assert open_store(str(tmp_path / "rel" / "dir")).get_bytes("k") == b"v"
    with pytest.raises(StoreConfigError, match="file:///absolute/path"):
        open_store("file://somehost/data")
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(StoreConfigError, match="not a directory"):
        open_store(str(tmp_path / "afile"))


def test_local_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("k", b"old")
    src = tmp_path / "new.bin"
    src.write_bytes(b"new" * 1000)

    def failing_copy(fsrc: object, fdst: object, length: int = 0) -> None:
        fdst.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copyfileobj", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        store.put_file("k", src)
    assert store.get_bytes("k") == b"old"  # readers never saw the partial write
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["k"]  # temp file removed


def test_local_list_hides_temp_files_and_delete_prunes_dirs(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("d/e/k", b"1")
    (tmp_path / "d" / ".k.abc.polydistill-tmp").write_bytes(b"in flight")
    assert store.list() == ["d/e/k"]
    store.delete("d/e/k")
    assert not (tmp_path / "d" / "e").exists()


# --- S3 store ------------------------------------------------------------------------------------------


def test_s3_uri_and_repr_hold_no_credentials(s3_env: str, s3_server: dict[str, str]) -> None:
    store = open_store(s3_env + "/")
    assert isinstance(store, S3Store)
    assert store.uri == s3_env
    assert store.local_path() is None
    for text in (store.uri, repr(store), repr(store.child("x"))):
        assert s3_server["secret_key"] not in text
        assert s3_server["access_key"] not in text


def test_s3_large_file_goes_multipart(s3_env: str, s3_server: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 * 1024 * 1024))
    store = S3Store(s3_env, part_size=MIN_PART_SIZE)
    store.put_file("big.bin", src)
    # A multipart object's ETag ends in "-<number of parts>": 11 MiB in 5 MiB parts is 3 parts.
    stat = _minio(s3_server).stat_object(store.bucket, f"{store.prefix}/big.bin")
    assert stat.etag is not None and stat.etag.endswith("-3")
    assert store.size("big.bin") == src.stat().st_size
    dest = tmp_path / "back.bin"
    store.get_file("big.bin", dest)
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    with pytest.raises(StoreConfigError, match="part_size"):
        S3Store(s3_env, part_size=MIN_PART_SIZE - 1)


def test_s3_bucket_root_and_region(s3_env: str, s3_server: dict[str, str], monkeypatch) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # the region given: no GetBucketLocation call
    bucket_store = open_store(f"s3://{s3_server['bucket']}")
    assert bucket_store.uri == f"s3://{s3_server['bucket']}"
    prefix = s3_env.rsplit("/", 1)[1]
    bucket_store.put_bytes(f"{prefix}/k", b"v")
    assert open_store(s3_env).list() == ["k"]
    assert f"{prefix}/k" in bucket_store.list(prefix)


def test_s3_missing_bucket(s3_env: str) -> None:
    uri = f"s3://polydistill-missing-{uuid.uuid4().hex[:8]}/p"
    with pytest.raises(BucketNotFoundError, match="--create-bucket") as info:
        open_store(uri)
    assert "polydistill-missing-" in str(info.value)
    store = open_store(uri, create_bucket=True)
    store.put_bytes("k", b"v")
    assert open_store(uri).get_bytes("k") == b"v"
    assert open_store(uri, create_bucket=True).list() == ["k"]  # already there: fine


def test_s3_missing_endpoint(no_store_env: None) -> None:
    with pytest.raises(StoreConfigError, match="MINIO_ENDPOINT") as info:
        open_store("s3://bucket/prefix")
    assert "AWS_ENDPOINT_URL" in str(info.value)


def test_s3_endpoint_forms() -> None:
    assert S3Settings.from_env({"MINIO_ENDPOINT": "https://h:9000"}) == S3Settings("h:9000", secure=True)
    assert S3Settings.from_env({"MINIO_ENDPOINT": "http://h:9000/"}) == S3Settings("h:9000", secure=False)
    assert S3Settings.from_env({"MINIO_ENDPOINT": "h:9000"}).secure is False
    assert S3Settings.from_env({"MINIO_ENDPOINT": "h:9000", "MINIO_SECURE": "True"}).secure is True
    assert S3Settings.from_env({"AWS_ENDPOINT_URL": "h:1", "AWS_S3_SECURE": "1"}) == S3Settings("h:1", True)
    # MINIO_ENDPOINT wins; a scheme decides TLS whatever MINIO_SECURE says.
    both = {"MINIO_ENDPOINT": "http://a:1", "AWS_ENDPOINT_URL": "https://b:2", "MINIO_SECURE": "true"}
    assert S3Settings.from_env(both) == S3Settings("a:1", secure=False)
    env = {
        "MINIO_ENDPOINT": "h:9000",
        "MINIO_ACCESS_KEY": "minio-access",
        "MINIO_SECRET_KEY": "minio-secret-value",
        "AWS_REGION": "eu-central-1",
    }
    settings = S3Settings.from_env(env)
    assert (settings.access_key, settings.secret_key, settings.region) == (
        "minio-access",
        "minio-secret-value",
        "eu-central-1",
    )
    assert "minio-secret-value" not in repr(settings)
    with pytest.raises(StoreConfigError, match="MINIO_SECURE"):
        S3Settings.from_env({"MINIO_ENDPOINT": "h:9000", "MINIO_SECURE": "maybe"})
    with pytest.raises(StoreConfigError, match="scheme"):
        S3Settings.from_env({"MINIO_ENDPOINT": "ftp://h:9000"})
    with pytest.raises(StoreConfigError, match="path"):
        S3Settings.from_env({"MINIO_ENDPOINT": "http://h:9000/minio"})
    with pytest.raises(StoreConfigError) as info:
        S3Settings.from_env({"MINIO_ENDPOINT": "http://user:hunter2-pass@h:9000"})
    assert "hunter2-pass" not in str(info.value)
    with pytest.raises(StoreConfigError, match="AWS_SECRET_ACCESS_KEY"):
        S3Settings.from_env({"MINIO_ENDPOINT": "h:9000", "AWS_ACCESS_KEY_ID": "only-the-access-key"})


def test_bad_scheme_and_uris(s3_env: str) -> None:
    with pytest.raises(StoreConfigError, match="s3://bucket/prefix") as info:
        open_store("gs://bucket/prefix")
    assert "file:///absolute/path" in str(info.value)
    with pytest.raises(StoreConfigError) as info:
        open_store("gs://someone:hunter2-pass@bucket/prefix")
    assert "hunter2-pass" not in str(info.value)
    with pytest.raises(StoreConfigError) as info:
        open_store("s3://someone:hunter2-pass@bucket/prefix")
    assert "hunter2-pass" not in str(info.value)
    with pytest.raises(StoreConfigError):
        open_store("s3:///prefix-without-bucket")
    with pytest.raises(StoreConfigError):
        open_store("s3://bucket/a/../b")
    with pytest.raises(StoreConfigError):
        open_store("s3://Not_A_Valid_Bucket/p")
    with pytest.raises(StoreConfigError):
        open_store("   ")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def test_s3_unreachable_endpoint_fails_fast(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _closed_port()
    monkeypatch.setenv("MINIO_ENDPOINT", f"127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(StoreUnreachableError) as info:
        open_store(s3_env)  # default policy: 5 attempts
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "MINIO_ENDPOINT" in message
    assert "5 attempt" in message


def test_store_retries_env(s3_env: str, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setenv("MINIO_ENDPOINT", f"127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("POLYDISTILL_STORE_RETRIES", "1")
    with caplog.at_level(logging.WARNING, logger="polydistill.store"), pytest.raises(StoreUnreachableError):
        open_store(s3_env)
    assert "retry" not in caplog.text  # one attempt, no retry
    monkeypatch.setenv("POLYDISTILL_STORE_RETRIES", "zero")
    with pytest.raises(StoreConfigError, match="POLYDISTILL_STORE_RETRIES"):
        open_store(s3_env)


# The retry loop is exercised with real minio/urllib3 exception objects raised from the client method the
# store calls (moto cannot be told to fail transiently); the sleep is recorded instead of slept.


def _flaky_store(s3_env: str, monkeypatch, failures: list[BaseException], attempts: int = 5):
    sleeps: list[float] = []
    store = S3Store(s3_env, retry=RetryPolicy(attempts=attempts, sleep=sleeps.append))
    store.put_bytes("k", b"12345")
    real_stat = store._client.stat_object
    calls = []

    def stat_object(*args, **kwargs):
        calls.append(args)
        if failures:
            raise failures.pop(0)
        return real_stat(*args, **kwargs)

    monkeypatch.setattr(store._client, "stat_object", stat_object)
    return store, sleeps, calls


def _s3_error(code: str, status: int) -> S3Error:
    response = urllib3.HTTPResponse(body=b"", status=status)
    return S3Error(response, code, "message", "/r", "req", "host")


def test_s3_transient_errors_are_retried(s3_env: str, monkeypatch, caplog) -> None:
    failures = [
        ServerError("server failed with HTTP status code 503", 503),
        urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
        _s3_error("SlowDown", 503),
    ]
    store, sleeps, calls = _flaky_store(s3_env, monkeypatch, failures)
    with caplog.at_level(logging.WARNING, logger="polydistill.store"):
        assert store.size("k") == 5
    assert len(calls) == 4
    assert len(sleeps) == 3
    for retry, delay in enumerate(sleeps, start=1):
        assert 0.5 * 0.2 * 2 ** (retry - 1) <= delay <= 0.2 * 2 ** (retry - 1)
    assert caplog.text.count("retry") == 3


def test_s3_retries_give_up_and_cap_delay(s3_env: str, monkeypatch) -> None:
    failures = [_s3_error("InternalError", 500) for _ in range(10)]
    store, sleeps, calls = _flaky_store(s3_env, monkeypatch, failures, attempts=8)
    with pytest.raises(StoreError, match="InternalError") as info:
        store.size("k")
    assert not isinstance(info.value, StoreAuthError | ObjectNotFoundError)
    assert len(calls) == 8
    assert len(sleeps) == 7
    assert max(sleeps) <= 5.0
    assert RetryPolicy().delay(30) <= 5.0


def test_s3_permanent_errors_are_not_retried(s3_env: str, monkeypatch) -> None:
    store, sleeps, calls = _flaky_store(s3_env, monkeypatch, [_s3_error("AccessDenied", 403)])
    with pytest.raises(StoreAuthError, match="AWS_ACCESS_KEY_ID"):
        store.size("k")
    assert (len(calls), sleeps) == (1, [])


# --- credentials -----------------------------------------------------------------------------------------
#
# moto accepts any credentials by default. It checks signatures only while its INITIAL_NO_AUTH_ACTION_COUNT
# setting is exhausted, and then only for access keys its IAM knows. The fixture below creates IAM users
# (while checks are off), switches checks on through the server's /moto-api/reset-auth endpoint and back
# off afterwards. The setting is process-wide, so these tests must not run concurrently with other S3 tests
# in the same process (pytest runs tests one at a time). Known moto gap: with checks on it also rejects
# minio's correctly signed ListObjectsV2 requests, so the good-credentials check below avoids list().


@pytest.fixture
def moto_auth(s3_env: str, s3_server: dict[str, str]) -> Iterator[dict[str, str]]:
    iam = boto3.client(
        "iam",
        endpoint_url=s3_server["endpoint"],
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    suffix = uuid.uuid4().hex[:8]
    allow_all = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.create_user(UserName=f"allowed-{suffix}")
    iam.put_user_policy(UserName=f"allowed-{suffix}", PolicyName="s3", PolicyDocument=json.dumps(allow_all))
    iam.create_user(UserName=f"denied-{suffix}")
    allowed = iam.create_access_key(UserName=f"allowed-{suffix}")["AccessKey"]
    denied = iam.create_access_key(UserName=f"denied-{suffix}")["AccessKey"]
    reset = f"{s3_server['endpoint']}/moto-api/reset-auth"
    requests.post(reset, data=b"0", timeout=10).raise_for_status()
    try:
        yield {
            "access_key": allowed["AccessKeyId"],
            "secret_key": allowed["SecretAccessKey"],
            "denied_access_key": denied["AccessKeyId"],
            "denied_secret_key": denied["SecretAccessKey"],
        }
    finally:
        requests.post(reset, data=b"inf", timeout=10).raise_for_status()


def _assert_no_leak(exc: BaseException, caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    # Client-side log records only: moto's own records (the server runs in this process) quote the
    # Authorization header, as a remote server's logs would.
    client_logs = [r.getMessage() for r in caplog.records if r.name.startswith(("polydistill", "urllib3"))]
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), *client_logs]
    for secret in secrets:
        for text in texts:
            assert secret not in text


def test_s3_good_credentials_pass_moto_auth(
    moto_auth: dict[str, str], s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_auth["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_auth["secret_key"])
    store = open_store(s3_env)
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"
    assert store.exists("k")


def test_s3_wrong_secret_is_auth_error(
    moto_auth: dict[str, str], s3_env: str, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    wrong = "wrong-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_auth["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with caplog.at_level(logging.DEBUG), pytest.raises(StoreAuthError) as info:
        open_store(s3_env)
    message = str(info.value)
    assert "SignatureDoesNotMatch" in message
    assert "AWS_SECRET_ACCESS_KEY" in message
    assert s3_env in message
    _assert_no_leak(info.value, caplog, wrong, moto_auth["secret_key"], moto_auth["access_key"])


def test_s3_unknown_access_key_is_auth_error(
    moto_auth: dict[str, str], s3_env: str, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    unknown, secret = "AKIAPOLYDISTILLUNKNOWN", "some-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", unknown)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with caplog.at_level(logging.DEBUG), pytest.raises(StoreAuthError, match="AWS_ACCESS_KEY_ID") as info:
        open_store(s3_env)
    assert "InvalidAccessKeyId" in str(info.value)
    _assert_no_leak(info.value, caplog, unknown, secret)


def test_s3_access_denied_is_auth_error(
    moto_auth: dict[str, str], s3_env: str, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setenv("MINIO_ACCESS_KEY", moto_auth["denied_access_key"])  # the MINIO_* names work too
    monkeypatch.setenv("MINIO_SECRET_KEY", moto_auth["denied_secret_key"])
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with caplog.at_level(logging.DEBUG), pytest.raises(StoreAuthError, match="AccessDenied") as info:
        open_store(s3_env)
    _assert_no_leak(info.value, caplog, moto_auth["denied_access_key"], moto_auth["denied_secret_key"])


# --- helpers ---------------------------------------------------------------------------------------------


def test_redact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEACCESS")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t/with+chars")
    monkeypatch.setenv("MINIO_SECRET_KEY", "minio-secret-key")
    monkeypatch.setenv("MINIO_ACCESS_KEY", "ab")  # too short to redact without garbling the text
    text = "key AKIAEXAMPLEACCESS secret s3cr3t/with+chars and minio-secret-key; about ab"
    assert redact(text) == "key *** secret *** and ***; about ab"
    assert redact("nothing secret here") == "nothing secret here"
    S3Settings("h:1", access_key="passed-directly-access", secret_key="passed-directly-secret")
    assert redact("x passed-directly-secret y") == "x *** y"


def test_join_uri() -> None:
    assert join_uri("s3://b/p", "x", "y/z") == "s3://b/p/x/y/z"
    assert join_uri("s3://b/p/", "/x/", "", "y") == "s3://b/p/x/y"
    assert join_uri("s3://b") == "s3://b"
    assert join_uri("file:///tmp/a", "b") == "file:///tmp/a/b"
    assert join_uri("file:///", "tmp", "a") == "file:///tmp/a"
    with pytest.raises(StoreConfigError):
        join_uri("s3://b/p", "../q")
