"""From a built image to the user's registry: ``scripts/push-image.sh`` pushes to a real registry on 127.0.0.1
(Debian's ``docker-registry``, the CNCF distribution server) and records the digests; ``polydistill compile``
then names those digests in every task. The references and ``--registry`` are checked without an engine.

Where the image comes from: the project image when it is built here (CI builds it first), else a tiny image
imported from a one-file tarball (a real image all the same: layers, manifest, digest). Without an engine or
``docker-registry`` the push test skips, except on CI (``CI=true``), where it fails: CI installs both
(``scripts/docker-engine.sh install``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from polydistill_kfp import docker_runner
from polydistill_kfp.images import ImageError, Images, check_reference, in_registry, task_images

ROOT = Path(__file__).resolve().parents[1]
ON_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
#: The manifest kinds a registry may answer with (Docker v2 and OCI, single image or index).
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])


def _unavailable(reason: str) -> None:
    if ON_CI:
        pytest.fail(f"{reason} (CI=true: scripts/docker-engine.sh install provides it)")
    pytest.skip(reason)


# ------------------------------------------------------------------------------ references, no engine


def test_registry_prefix_keeps_name_and_tag() -> None:
    base = Images.defaults()
    moved = Images.choose(registry="127.0.0.1:5000/team/")
    name_tag = base.cpu.rsplit("/", 1)[-1]
    assert moved.cpu == f"127.0.0.1:5000/team/{name_tag}"
    assert moved.cuda == f"127.0.0.1:5000/team/{base.cuda.rsplit('/', 1)[-1]}"
    digest = "reg.example.com/polydistill@sha256:" + "a" * 64
    assert Images.choose(image=digest, registry="127.0.0.1:5000").cpu == digest  # --image wins
    assert Images.choose(image_cuda=digest).cpu == base.cpu


@pytest.mark.parametrize("ref", ["Upper/Case:1", "a b", "reg/x@sha256:abc", "reg/x:", ""])
def test_bad_references_are_refused_naming_the_option(ref: str) -> None:
    with pytest.raises(ImageError, match=r"^--image-cuda .* is not an image reference"):
        check_reference(ref, "--image-cuda")


@pytest.mark.parametrize("registry", ["http://127.0.0.1:5000", "reg/UPPER", "reg:port"])
def test_bad_registries_are_refused(registry: str) -> None:
    with pytest.raises(ImageError, match=r"^--registry .* is not a registry prefix"):
        in_registry("ghcr.io/polydistill/polydistill:0.1.0", registry)


def test_compile_writes_the_images_into_every_task_and_nothing_else(tmp_path: Path) -> None:
    from polydistill_kfp.compile import COMPILED_DIR, compile_all

    images = Images("127.0.0.1:5000/polydistill@sha256:" + "1" * 64, "127.0.0.1:5000/polydistill@sha256:" + "2" * 64)
    for path in compile_all(tmp_path, images):
        committed = COMPILED_DIR / path.name
        base = task_images(committed)
        got = task_images(path)
        assert got.keys() == base.keys()
        defaults = Images.defaults()
        for label, image in got.items():
            assert image == (images.cuda if base[label] == defaults.cuda else images.cpu), label
        # Only the image lines differ from the committed file.
        diff = [(a, b) for a, b in zip(committed.read_text().splitlines(), path.read_text().splitlines(),
                                       strict=True) if a != b]
        assert diff and all(a.strip().startswith("image: ") and b.strip().startswith("image: ") for a, b in diff)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


# ------------------------------------------------------------------------------ a real push


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def engine_env() -> dict[str, str]:
    """The environment for docker CLI calls: DOCKER_HOST of the engine that answers (skip/fail without)."""
    if shutil.which("docker") is None:
        _unavailable("no docker CLI (sudo bash scripts/docker-engine.sh install)")
    env = {**os.environ, "DOCKER_HOST": docker_runner.engine_host()}
    ping = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], env=env, capture_output=True,
                          text=True, timeout=60)
    if ping.returncode != 0:
        _unavailable(f"no Docker engine at {env['DOCKER_HOST']}")
    return env


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[str]:
    """``docker-registry`` serving on 127.0.0.1 (a free port), its storage in a temporary directory."""
    binary = shutil.which("docker-registry")
    if binary is None:
        _unavailable("no docker-registry (apt-get install docker-registry; scripts/docker-engine.sh install)")
    tmp = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = tmp / "config.yml"
    # JSON is YAML: the distribution server's configuration, storage on disk, HTTP on loopback only.
    config.write_text(json.dumps({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(tmp / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }))
    log = open(tmp / "registry.log", "w")  # noqa: SIM115 - open for the process's lifetime
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # until the API answers (bounded), not for a fixed time
            try:
                with urllib.request.urlopen(f"{url}/v2/", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not answer on {url}: {(tmp / 'registry.log').read_text()}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _source_image(env: dict[str, str], tmp: Path) -> tuple[str, bool]:
    """(tag, made here): the project image when built, else a one-file image imported for this test."""
    project = Images.defaults().cpu
    if subprocess.run(["docker", "image", "inspect", project], env=env, capture_output=True).returncode == 0:
        return project, False
    payload = f"polydistill registry test {uuid.uuid4()}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("polydistill-test.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    (tmp / "rootfs.tar").write_bytes(buf.getvalue())
    tag = f"polydistill-registry-test/polydistill:{uuid.uuid4().hex[:12]}"
    subprocess.run(["docker", "import", str(tmp / "rootfs.tar"), tag], env=env, check=True, capture_output=True)
    return tag, True


def _registry_digest(registry: str, repository: str, tag: str) -> str:
    req = urllib.request.Request(f"http://{registry}/v2/{repository}/manifests/{tag}", method="HEAD",
                                 headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(resp.headers["Docker-Content-Digest"])


def test_push_then_compile_names_the_pushed_digest_in_every_task(engine_env, registry, tmp_path) -> None:
    source, made_here = _source_image(engine_env, tmp_path)
    record = tmp_path / "pushed.env"
    name, tag = source.rsplit("/", 1)[-1].split(":", 1)
    pushed = [f"{registry}/{name}:{tag}"]
    try:
        # The CUDA slot gets the same image: the paper variant's GPU tasks must name a pushed digest too.
        out = subprocess.run(["bash", "scripts/push-image.sh", registry, "--from-cpu", source, "--from-cuda", source,
                              "--record", str(record)], cwd=ROOT, env=engine_env, capture_output=True, text=True,
                             timeout=1200)
        assert out.returncode == 0, out.stderr[-3000:]
        values = dict(line.split("=", 1) for line in record.read_text().splitlines() if not line.startswith("#"))
        assert set(values) == {"POLYDISTILL_IMAGE", "POLYDISTILL_IMAGE_CUDA"}
        # The digest the registry itself serves for the pushed tag.
        digest = _registry_digest(registry, name, tag)
        want = f"{registry}/{name}@{digest}"
        assert values["POLYDISTILL_IMAGE"] == want and values["POLYDISTILL_IMAGE_CUDA"] == want, values

        # A user's compile after the push: the recorded variables, from a directory outside the checkout.
        env = {**os.environ, **values}
        compiled = tmp_path / "compiled"
        out = subprocess.run([sys.executable, "-m", "polydistill.cli", "compile", "--out", str(compiled)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        files = sorted(compiled.glob("*.yaml"))
        assert [f.name for f in files] == ["polydistill-paper.yaml", "polydistill.yaml"]
        for path in files:
            images = task_images(path)
            assert images and set(images.values()) == {want}, (path.name, images)
    finally:
        for ref in pushed + ([source] if made_here else []):
            subprocess.run(["docker", "rmi", "--no-prune", ref], env=engine_env, capture_output=True)
