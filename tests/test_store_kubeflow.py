"""The object store under Kubeflow 1.11's per-profile key, on moto's S3 server with its IAM checks on.

Kubeflow's profile controller gives each profile namespace a key whose only policy is (kubeflow/manifests
v1.11.0, ``applications/pipeline/upstream/base/installs/multi-user/pipelines-profile-controller/sync.py``,
``put_user_policy``): ``s3:Put*``, ``s3:Get*``, ``s3:List*`` on ``mlpipeline/artifacts/*``,
``mlpipeline/private-artifacts/<ns>/*``, ``mlpipeline/private/<ns>/*`` and ``mlpipeline/shared/*``. The same
policy is given to a moto IAM user here, so the store is judged by AWS's policy semantics: the profile's
prefix works, a bucket of its own (``s3://polydistill``) or a path outside the prefix is refused with one line
naming the bucket, the prefix and the policy. The policy grants no ``s3:DeleteObject`` and, by AWS's rules,
no listing (``ListObjects`` needs ``s3:ListBucket`` on the bucket itself): the mirrors of training tasks and
the published teachers are read through an index and survive undeletable leftovers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import boto3
import pytest
import requests

from polydistill.store import StoreAuthError, open_store

NAMESPACE = "alice"


def kubeflow_policy(namespace: str) -> dict:
    """The profile key's policy, verbatim from kubeflow/manifests v1.11.0 sync.py."""
    bucket = "mlpipeline"
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Action": ["s3:Put*", "s3:Get*", "s3:List*"],
        "Resource": [
            f"arn:aws:s3:::{bucket}/artifacts/*",
            f"arn:aws:s3:::{bucket}/private-artifacts/{namespace}/*",
            f"arn:aws:s3:::{bucket}/private/{namespace}/*",
            f"arn:aws:s3:::{bucket}/shared/*",
        ],
    }]}


#: What an admin adds to a profile's policy so that retention and work-directory cleanup may delete
#: (docs/KUBEFLOW.md): s3:DeleteObject on the profile's private prefix only.
ADMIN_DELETE_STATEMENT = {"Effect": "Allow", "Action": ["s3:DeleteObject"],
                          "Resource": [f"arn:aws:s3:::mlpipeline/private/{NAMESPACE}/*"]}


@pytest.fixture
def profile_key(s3_env: str, s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment of a pipeline pod in profile ``alice``: only the profile's key."""
    yield from _key_with(kubeflow_policy(NAMESPACE), s3_server, monkeypatch)


@pytest.fixture
def profile_key_that_deletes(s3_env: str, s3_server: dict[str, str],
                             monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The profile's key after the admin's change: the policy plus :data:`ADMIN_DELETE_STATEMENT`."""
    policy = kubeflow_policy(NAMESPACE)
    policy["Statement"].append(ADMIN_DELETE_STATEMENT)
    yield from _key_with(policy, s3_server, monkeypatch)


def _key_with(policy: dict, s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make a moto IAM user with ``policy``, put its key in the environment and enforce IAM while in use."""
    admin = {"endpoint_url": s3_server["endpoint"], "region_name": "us-east-1",
             "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    s3 = boto3.client("s3", **admin)
    if "mlpipeline" not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket="mlpipeline")
    iam = boto3.client("iam", **admin)
    user = f"{NAMESPACE}-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName=f"KubeflowProject{NAMESPACE}",
                        PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    reset = f"{s3_server['endpoint']}/moto-api/reset-auth"
    requests.post(reset, data=b"0", timeout=10).raise_for_status()
    try:
        yield
    finally:
        requests.post(reset, data=b"inf", timeout=10).raise_for_status()


def test_the_profiles_private_prefix_works(profile_key: None) -> None:
    store = open_store(f"s3://mlpipeline/private/{NAMESPACE}/polydistill/runs/1")
    store.put_bytes("buffers/Pong/manifest.json", b"{}")
    assert store.get_bytes("buffers/Pong/manifest.json") == b"{}"
    assert store.exists("buffers/Pong/manifest.json")


@pytest.mark.parametrize("uri", ["s3://mlpipeline/polydistill", "s3://mlpipeline/private/bob/polydistill"])
def test_a_write_outside_the_prefix_names_bucket_prefix_and_policy(profile_key: None, uri: str) -> None:
    with pytest.raises(StoreAuthError) as info:
        open_store(uri).put_bytes("x", b"1")
    message = str(info.value)
    assert "\n" not in message
    prefix = uri.removeprefix("s3://mlpipeline/")
    assert f"bucket 'mlpipeline', prefix '{prefix}/'" in message
    assert "mlpipeline/private/<namespace>/" in message and "s3://mlpipeline/private/NAMESPACE/polydistill" in message


def test_a_bucket_of_its_own_is_refused_with_the_policy(profile_key: None) -> None:
    with pytest.raises(StoreAuthError, match=r"bucket 'polydistill'.*mlpipeline/private/<namespace>/"):
        open_store("s3://polydistill", create_bucket=True).put_bytes("x", b"1")


def test_training_mirrors_and_teachers_work_without_listing(profile_key: None, tmp_path) -> None:
    """A retried task's working directory and the published teachers are found through their index, never by
    listing the prefix (ListObjects needs s3:ListBucket on the bucket, outside the profile's policy)."""
    from polydistill_kfp.components import runtime as rt

    root = f"s3://mlpipeline/private/{NAMESPACE}/polydistill/runs/{uuid.uuid4().hex[:8]}"
    wd = rt.WorkDir(f"{root}/work/teacher/Pong", sync_seconds=0)
    (wd.path / "resume").mkdir()
    (wd.path / "resume" / "LATEST").write_text("step-1")
    (wd.path / "run.json").write_text("{}")
    wd.sync()
    retry = rt.WorkDir(wd.uri)
    assert retry.restore() == 2 and (retry.path / "resume" / "LATEST").read_text() == "step-1"
    (wd.path / "resume" / "LATEST").unlink()
    wd.sync()
    assert rt.WorkDir(wd.uri).restore() == 1
    src = tmp_path / "teacher"
    src.mkdir()
    (src / "model.pt").write_bytes(b"w")
    (src / "metadata.json").write_text("{}")
    got = rt.fetch_dir(rt.publish_dir(src, f"{root}/teachers/Pong"))
    assert (got / "model.pt").read_bytes() == b"w" and (got / "metadata.json").is_file()
    wd.discard()  # succeeds although the key may not delete (the policy grants no s3:DeleteObject)
    assert rt.WorkDir(wd.uri).restore() == 0


def _three_runs(store: str) -> list[str]:
    """Three indexed pipeline runs under ``store``, each with a Pong buffer (manifest and one shard)."""
    from polydistill import retention

    roots = []
    for i in range(3):
        root = f"{store}/runs/r{i}-{uuid.uuid4().hex[:6]}"
        buf = open_store(f"{root}/buffers/Pong")
        buf.put_bytes("shard-0.zst", b"x")
        buf.put_bytes("manifest.json", json.dumps({"shards": [{"name": "shard-0.zst"}]}).encode())
        retention.record_run(store, root.rsplit("/", 1)[-1], root, ["Pong"], started=float(i))
        roots.append(root)
    return roots


def test_retention_is_skipped_in_one_line_when_the_key_may_not_delete(profile_key: None, caplog) -> None:
    """Kubeflow's per-profile policy grants no s3:DeleteObject: retention says so once and changes nothing."""
    from polydistill import retention

    store = f"s3://mlpipeline/private/{NAMESPACE}/polydistill-{uuid.uuid4().hex[:6]}"
    roots = _three_runs(store)
    before = retention.read_index(store)
    assert not retention.can_delete(store)
    with caplog.at_level("WARNING", logger="polydistill.retention"):
        assert retention.apply(store, 1, set()) == []
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "polydistill.retention"]
    assert "retention skipped: this key may not delete" in warning and "s3:DeleteObject" in warning
    assert "2 old runs stay" in warning
    assert retention.read_index(store) == before  # nothing marked deleted
    assert all(open_store(f"{r}/buffers/Pong").get_bytes("shard-0.zst") == b"x" for r in roots)


def test_retention_deletes_once_the_admin_allows_it(profile_key_that_deletes: None) -> None:
    from polydistill import retention

    store = f"s3://mlpipeline/private/{NAMESPACE}/polydistill-{uuid.uuid4().hex[:6]}"
    roots = _three_runs(store)
    assert retention.can_delete(store)
    deleted = retention.apply(store, 1, set())
    assert [d["run_root"] for d in deleted] == roots[:2] and all(d["refused"] == 0 for d in deleted)
    assert open_store(f"{roots[2]}/buffers/Pong").get_bytes("shard-0.zst") == b"x"
