"""Render every kustomization under manifests/ and check what it would deploy.

Each kustomization is rendered with `kubectl kustomize` (or a standalone `kustomize build`), which works
offline. Every rendered object is validated against the Kubernetes 1.31 schemas by kubernetes-validate in
strict mode (unknown fields fail, as `kubernetes-validate --strict` does); then the project's own rules are
checked: probes and resources on every workload, non-root pods, placeholder-only Secrets, MLflow's
`--allowed-hosts`, both buckets created, the kubeflow overlay on Kubeflow's MinIO.
scripts/install-test-tools.sh installs kubectl and kubernetes-validate where they are missing.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
KUSTOMIZATIONS = {
    "base": MANIFESTS / "base",
    "local": MANIFESTS / "overlays" / "local",
    "kubeflow": MANIFESTS / "overlays" / "kubeflow",
    "secrets": MANIFESTS / "secrets",
}
DEPLOYABLE = ("base", "local", "kubeflow")
K8S_VERSION = "1.31.0"
PLACEHOLDERS = {"REPLACE_ME", ""}
WORKLOADS = {"Deployment", "StatefulSet", "Job"}
KUBEFLOW_NAMESPACE = "kubeflow-user-example-com"


def _renderer() -> list[str] | None:
    if kubectl := os.environ.get("KUBECTL") or shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    return None


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    command = _renderer()
    if command is None:
        pytest.skip("neither kubectl nor kustomize is on PATH; run scripts/install-test-tools.sh")
    out = {}
    for name, path in KUSTOMIZATIONS.items():
        proc = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"rendering {name} failed:\n{proc.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return out


def _find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def _one(docs: list[dict], kind: str, name: str) -> dict:
    found = _find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    return [
        (f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in WORKLOADS
    ]


def _containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def _config(docs: list[dict]) -> dict[str, str]:
    return _one(docs, "ConfigMap", "polydistill-config")["data"]


def _resolved_env(container: dict, docs: list[dict]) -> dict[str, str]:
    """The container's env as the kubelet would see it: ConfigMap keys looked up, $(VAR) expanded."""
    config = _config(docs)
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var["value"])
        elif ref := var.get("valueFrom", {}).get("configMapKeyRef"):
            env[var["name"]] = config[ref["key"]]
    return env


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_object_validates_strictly(rendered, name):
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(
            "kubernetes-validate is missing: pip install -e '.[test]' or scripts/install-test-tools.sh"
        )
    docs = rendered[name]
    assert docs, f"{name} renders nothing"
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert not errors, "\n".join(errors)
    ids = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(ids) == len(set(ids)), "duplicate objects"


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_workloads_have_resources_and_probes(rendered, name):
    for kind in ("Deployment", "StatefulSet"):
        for doc in _find(rendered[name], kind):
            for c in doc["spec"]["template"]["spec"]["containers"]:
                where = f"{kind}/{doc['metadata']['name']}/{c['name']}"
                assert "readinessProbe" in c and "livenessProbe" in c, f"{where}: probes"
    for where, pod in _pod_specs(rendered[name]):
        for c in _containers(pod):
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(bound, {})), f"{where}/{c['name']}"


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_pods_are_locked_down(rendered, name):
    for where, pod in _pod_specs(rendered[name]):
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0, where
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        for c in _containers(pod):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
            # A pinned release tag, never a moving one.
            assert re.search(r":[\w.-]+$", c["image"]) and not c["image"].endswith(":latest"), c["image"]


def test_secrets_hold_placeholders_only(rendered):
    secrets = [d for docs in rendered.values() for d in _find(docs, "Secret")]
    assert secrets, "the secret templates render nothing"
    for secret in secrets:
        values = [base64.b64decode(v).decode() for v in (secret.get("data") or {}).values()]
        values += list((secret.get("stringData") or {}).values())
        assert values and set(values) <= PLACEHOLDERS, f"Secret/{secret['metadata']['name']} has a real value"


def test_deployables_carry_no_secret_but_every_referenced_one_is_templated(rendered):
    templates = {s["metadata"]["name"]: set(s["data"]) for s in _find(rendered["secrets"], "Secret")}
    assert templates == {
        "mlpipeline-minio-artifact": {"accesskey", "secretkey"},
        "mlflow-postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD"},
    }
    for name in DEPLOYABLE:
        # Applying an overlay must never overwrite the real Secrets created by hand.
        assert not _find(rendered[name], "Secret"), name
        for where, pod in _pod_specs(rendered[name]):
            for c in _containers(pod):
                for var in c.get("env", []):
                    if ref := var.get("valueFrom", {}).get("secretKeyRef"):
                        assert ref["key"] in templates.get(ref["name"], set()), f"{where}: {ref}"
                    if ref := var.get("valueFrom", {}).get("configMapKeyRef"):
                        assert ref["key"] in _config(rendered[name]), f"{where}: {ref}"


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_mlflow_server(rendered, name):
    docs = rendered[name]
    pod = _one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "mlflow")
    args = server["args"]
    allowed = [a for a in args if a.startswith("--allowed-hosts=")]
    assert len(allowed) == 1, "mlflow server needs --allowed-hosts (MLflow 3.x answers 403 to other Hosts)"
    hosts = set(allowed[0].removeprefix("--allowed-hosts=").split(","))
    assert {"mlflow", "mlflow:5000", "localhost", "127.0.0.1"} <= hosts
    assert {
        "mlflow.$(POD_NAMESPACE).svc.cluster.local",
        "mlflow.$(POD_NAMESPACE).svc.cluster.local:5000",
    } <= hosts
    # Standalone: its own bucket; Kubeflow: the profile's private prefix of mlpipeline, the only place the
    # profile's key may write (kubeflow/manifests v1.11.0 pipelines-profile-controller/sync.py).
    destination = {"base": "s3://mlflow/", "local": "s3://mlflow/", "kubeflow": "s3://mlpipeline/private/$(POD_NAMESPACE)/mlflow/"}[name]
    assert "--serve-artifacts" in args and f"--artifacts-destination={destination}" in args
    env = _resolved_env(server, docs)
    namespace_var = next(v for v in server["env"] if v["name"] == "POD_NAMESPACE")
    assert namespace_var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert env["MLFLOW_BACKEND_STORE_URI"].endswith("@mlflow-postgres:5432/mlflow")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://" + _config(docs)["MINIO_ENDPOINT"]
    # Postgres, with a persistent volume per replica, is the backend store.
    postgres = _one(docs, "StatefulSet", "mlflow-postgres")
    assert postgres["spec"]["volumeClaimTemplates"]
    # Server and client at the same version: the image tag follows pyproject's mlflow pin.
    pin = next(
        d
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if d.startswith("mlflow==")
    )
    assert server["image"] == f"ghcr.io/mlflow/mlflow:v{pin.removeprefix('mlflow==')}-full"


def test_bucket_job_creates_both_buckets(rendered):
    docs = rendered["local"]
    container = _one(docs, "Job", "polydistill-buckets")["spec"]["template"]["spec"]["containers"][0]
    env = _resolved_env(container, docs)
    script = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], m[0]), "\n".join(container["command"]))
    mb = next(line for line in script.splitlines() if line.strip().startswith("mc mb"))
    assert "--ignore-existing" in mb
    assert {"store/polydistill", "store/mlflow"} <= set(mb.replace('"', "").split())
    assert env["S3_URL"] == "http://" + _config(docs)["MINIO_ENDPOINT"]


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_services_select_pods_and_named_ports(rendered, name):
    docs = rendered[name]
    templates = [d["spec"]["template"] for d in docs if d["kind"] in WORKLOADS]
    for service in _find(docs, "Service"):
        selector = service["spec"]["selector"].items()
        matches = [t["spec"] for t in templates if selector <= t["metadata"]["labels"].items()]
        assert matches, f"Service/{service['metadata']['name']} selects no pod"
        ports = {p["name"] for pod in matches for c in pod["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service/{service['metadata']['name']}: {port['targetPort']}"


def test_rbac_is_minimal(rendered):
    docs = rendered["local"]
    role = _one(docs, "Role", "polydistill-pipeline")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert set(rule["verbs"]) <= {"get", "create", "patch"}
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"] and rule["resourceNames"] == ["mlpipeline-minio-artifact"]
    binding = _one(docs, "RoleBinding", "polydistill-pipeline")
    assert binding["roleRef"]["name"] == "polydistill-pipeline"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "polydistill-pipeline", "namespace": "polydistill"}
    ]


def test_local_overlay_runs_its_own_minio(rendered):
    docs = rendered["local"]
    assert _one(docs, "Namespace", "polydistill")
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"polydistill"}
    for kind, name in (
        ("Deployment", "minio"),
        ("Service", "minio"),
        ("PersistentVolumeClaim", "minio-data"),
    ):
        assert _one(docs, kind, name)
    assert _config(docs)["MINIO_ENDPOINT"] == "minio:9000"
    assert _config(docs)["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert _config(docs)["POLYDISTILL_STORE_URI"] == "s3://polydistill"  # the bucket its Job creates


def test_kubeflow_overlay_reuses_kubeflows_minio(rendered):
    docs = rendered["kubeflow"]
    config = _config(docs)
    assert config["MINIO_ENDPOINT"] == "minio-service.kubeflow:9000"
    assert config["MLFLOW_S3_ENDPOINT_URL"] == "http://minio-service.kubeflow:9000"
    assert config["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # Empty: start-run stores datasets under s3://mlpipeline/private/<namespace>/polydistill.
    assert config["POLYDISTILL_STORE_URI"] == ""
    # Kubeflow's buckets: the profile's key may not create any, so nothing here tries.
    assert not _find(docs, "Job")
    # Kubeflow owns the profile namespace and the object store.
    assert not _find(docs, "Namespace")
    assert not [d for d in docs if d["metadata"]["name"].startswith("minio")]
    assert {d["metadata"]["namespace"] for d in docs} == {KUBEFLOW_NAMESPACE}
    for where, pod in _pod_specs(docs):
        for c in _containers(pod):
            for var in c.get("env", []):
                if ref := var.get("valueFrom", {}).get("secretKeyRef"):
                    # Only the Secret Kubeflow provides, plus polydistill's own Postgres credentials.
                    assert ref["name"] in {"mlpipeline-minio-artifact", "mlflow-postgres"}, where
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            assert doc["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
