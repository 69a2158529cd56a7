"""The project image: policy checks of its Dockerfiles, and checks of the real, built image.

A real build (``scripts/build-image.sh``, which CI runs) covers what reading the Dockerfiles used to stand in for:
that every COPY source reaches the build context, that the package installs whole and its smoke test (imports,
ROMs) passes as the runtime user. What a build cannot show stays a text check here, parsed as Docker does
(continuation lines joined, comments dropped, ``ARG`` defaults substituted) and compared with pyproject.toml:
the base and every pin are pinned and agree with pyproject, torch comes first and from PyTorch's index (a build
from the wheelhouse never meets PyPI's CUDA torch, an online one would), the user is numeric and non-root, no
credential is baked in, and ``.dockerignore`` keeps run outputs and secrets out of the context.

The built image itself (``src/polydistill_kfp/components/IMAGE``; the CUDA one when built) is inspected and run,
with no network: its user, environment, writable directories, versions, and that the wheelhouse stayed in the
builder stage. Without an engine or the image these tests skip, except on CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
#: Where the tag files live (package data of polydistill_kfp.components, so an installed wheel has them).
TAG_DIR = ROOT / "src" / "polydistill_kfp" / "components"
DOCKERFILES = {"cpu": IMAGES / "Dockerfile", "cuda": IMAGES / "Dockerfile.cuda"}
TORCH_PIN = "torch==2.13.0"
KFP_EXTRA = {"kfp==2.17.0", "kfp-kubernetes==2.17.0"}
MLFLOW_PIN = "mlflow==3.17.2"
BASE_IMAGE = re.compile(r"^python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?$")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, with `\\` continuations joined as Docker's parser does."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        # Docker drops comment lines, also between the continued lines of one instruction.
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        keyword, _, rest = (buf + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    return out


def _arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def _runs(instructions: list[tuple[str, str]]) -> list[tuple[int, str]]:
    return [(i, rest) for i, (keyword, rest) in enumerate(instructions) if keyword == "RUN"]


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


@pytest.fixture(params=sorted(DOCKERFILES), ids=sorted(DOCKERFILES))
def dockerfile(request) -> tuple[str, list[tuple[str, str]]]:
    path = DOCKERFILES[request.param]
    assert path.is_file(), f"missing {path}"
    return request.param, _instructions(path)


def test_pyproject_pins_are_the_ones_the_images_rely_on():
    project = _pyproject()["project"]
    assert TORCH_PIN in project["dependencies"]
    assert MLFLOW_PIN in project["dependencies"]
    assert set(project["optional-dependencies"]["kfp"]) == KFP_EXTRA


def test_base_image_is_pinned_python_slim_bookworm(dockerfile):
    _, ins = dockerfile
    args = _arg_defaults(ins)
    stages: set[str] = set()
    for keyword, rest in ins:
        if keyword != "FROM":
            continue
        image, *alias = _expand(rest, args).split()
        if image not in stages:  # `FROM builder` names an earlier stage, not an image
            assert BASE_IMAGE.match(image), (
                f"base image {image!r} is not a pinned python:3.11.N-slim-bookworm"
            )
        if alias:
            assert alias[0].upper() == "AS"
            stages.add(alias[1])
    assert len(stages) >= 2, "expected a multi-stage build (builder + runtime)"


def test_torch_is_installed_before_the_package(dockerfile):
    _, ins = dockerfile
    pip_runs = [(i, run) for i, run in _runs(ins) if "pip install" in run]
    torch_at = [i for i, run in pip_runs if TORCH_PIN in run.split()]
    package_at = [i for i, run in pip_runs if re.search(r"""pip install .*["']?\.\[kfp\]""", run)]
    assert torch_at, f"no RUN installs {TORCH_PIN}"
    assert package_at, 'no RUN installs the package with its kfp extra (pip install ".[kfp]")'
    assert pip_runs[0][0] == torch_at[0], "the first pip install must be torch's"
    assert torch_at[0] < package_at[0]


def test_torch_comes_from_the_right_wheel_index(dockerfile):
    variant, ins = dockerfile
    args = _arg_defaults(ins)
    torch_run = next(_expand(run, args) for _, run in _runs(ins) if TORCH_PIN in run.split())
    index = re.search(r"--index-url\s+\"?(\S+?)\"?(\s|$)", torch_run)
    assert index, "torch must come from PyTorch's wheel index (PyPI's Linux wheel drags in CUDA)"
    flavour = "cpu" if variant == "cpu" else r"cu12\d"
    assert re.fullmatch(rf"https://download\.pytorch\.org/whl/{flavour}", index[1]), index[1]


def test_pins_in_the_dockerfile_agree_with_pyproject(dockerfile):
    _, ins = dockerfile
    project = _pyproject()["project"]
    pins = {
        req.split("==")[0]: req for req in project["dependencies"] + project["optional-dependencies"]["kfp"]
    }
    for _, run in _runs(ins):
        for name, version in re.findall(r"\b(kfp-kubernetes|kfp|mlflow|torch)==([\w.]+)", run):
            assert f"{name}=={version}" == pins[name], (
                f"Dockerfile pins {name}=={version}, pyproject {pins[name]}"
            )


def test_runs_as_numeric_non_root_user_with_home_and_workdir(dockerfile):
    _, ins = dockerfile
    final = _final_stage(ins)
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the runtime stage must set USER"
    # Numeric, so that Kubernetes can verify runAsNonRoot.
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert match, f"USER {users[-1]!r} is not numeric"
    assert match[1] == "1000" and match[2] in (None, "1000")
    env = " ".join(rest for keyword, rest in final if keyword == "ENV")
    assert re.search(r"\bHOME=/\S+", env)
    workdir = [rest for keyword, rest in final if keyword == "WORKDIR"][-1]
    # The working directory must be writable by the user: created and chowned to 1000 in a RUN.
    assert any(workdir in run and "chown 1000:1000" in run for _, run in _runs(final)), workdir


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents wins."""

    def regex(pattern: str) -> re.Pattern[str]:
        parts = re.split(r"(\*\*/|\*\*|\*|\?|\[[^\]]*\])", pattern.strip("/"))
        table = {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
        return re.compile(
            "".join(table.get(part, part if part.startswith("[") else re.escape(part)) for part in parts)
        )

    pieces = path.split("/")
    prefixes = ["/".join(pieces[: n + 1]) for n in range(len(pieces))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        rx = regex(pattern.lstrip("!"))
        if any(rx.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        (".git/HEAD", True),
        ("runs/demon_attack/teacher.pt", True),
        ("checkpoint.pt", True),
        ("src/polydistill/weights.pt", True),
        ("mlruns/0/meta.yaml", True),
        ("mlflow.db", True),
        (".venv/bin/python", True),
        ("src/polydistill/__pycache__/cli.cpython-311.pyc", True),
        (".pytest_cache/v/cache/lastfailed", True),
        ("tests/test_images.py", True),
        ("manifests/secrets/minio.env", True),
        ("pyproject.toml", False),
        ("README.md", False),
        ("src/polydistill/__init__.py", False),
        ("src/polydistill_kfp/compiled/polydistill.yaml", False),
        ("src/polydistill_kfp/components/train_teacher.py", False),
    ],
)
def test_dockerignore(path, ignored):
    assert _ignored(path, _dockerignore()) is ignored


def test_image_tag_files_hold_one_tag_each():
    version = _pyproject()["project"]["version"]
    texts = {name: (TAG_DIR / name).read_text() for name in ("IMAGE", "IMAGE_CUDA")}
    for name, text in texts.items():
        assert len(text.splitlines()) == 1 and text.strip() == text.splitlines()[0], (
            f"{name}: one line, no blanks"
        )
    cpu, cuda = texts["IMAGE"].strip(), texts["IMAGE_CUDA"].strip()
    # The tag follows the package version, so a release bumps both together.
    assert cpu == f"ghcr.io/polydistill/polydistill:{version}"
    assert cuda == f"{cpu}-cuda"


# Names that would put a secret into an image layer or its metadata (ARG values are kept in the history too).
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.IGNORECASE)


def test_no_credentials_in_the_dockerfiles(dockerfile):
    _, ins = dockerfile
    for keyword, rest in ins:
        if keyword in ("ARG", "ENV", "LABEL"):
            assert not SECRET_NAME.search(rest), f"{keyword} {rest}: credentials never go into an image"
        if keyword == "RUN":
            assert not re.search(r"https?://[^/\s:@]+:[^/\s@]+@", rest), f"credentials in a URL: {rest}"


def test_install_mode_defaults_to_online_and_offline_needs_no_index(dockerfile):
    """The offline mode is a build argument beside the online default; offline, pip sees only the wheelhouse."""
    _, ins = dockerfile
    assert _arg_defaults(ins).get("INSTALL") == "online"
    mode_run = next(run for _, run in _runs(ins) if "$INSTALL" in run)
    assert "no-index = true" in mode_run and "find-links = /wheelhouse" in mode_run
    final = _final_stage(ins)
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert copies == ["--from=deps /opt/venv /opt/venv", "--from=builder /opt/package /opt/venv"], (
        "the runtime stage takes the venv and the package only"
    )


# ------------------------------------------------------------------------------------------- the built image

ON_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def engine():
    """A Docker SDK client on the engine the docker runner would use (skips, or fails on CI, without one)."""
    try:
        import docker
    except ImportError:
        if ON_CI:
            pytest.fail("CI=true but the Docker SDK is missing")
        pytest.skip("no Docker SDK")
    from polydistill_kfp.docker_runner import engine_host

    host = engine_host()
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        if ON_CI:
            pytest.fail(f"CI=true but no Docker engine answers at {host}: {type(e).__name__}")
        pytest.skip(f"no Docker engine at {host}")
    yield client
    client.close()


@pytest.fixture(params=["cpu", "cuda"])
def built_image(request, engine) -> tuple[str, str, dict]:
    """(variant, tag, attrs) of a built project image; CI builds the CPU one (the CUDA one may be missing)."""
    import docker

    tag = (TAG_DIR / ("IMAGE" if request.param == "cpu" else "IMAGE_CUDA")).read_text().strip()
    try:
        image = engine.images.get(tag)
    except docker.errors.ImageNotFound:
        if ON_CI and request.param == "cpu":
            pytest.fail(f"CI=true but {tag} is not built")
        flag = " --cuda" if request.param == "cuda" else ""
        pytest.skip(f"{tag} is not built (bash scripts/build-image.sh --offline{flag})")
    return request.param, tag, image.attrs


def _run_in(engine, tag: str, script: str) -> str:
    """Run a shell script in the image as its own user, with no network; its stdout (stderr on failure)."""
    import docker

    try:
        out = engine.containers.run(tag, ["bash", "-c", script], network_mode="none", remove=True, stderr=True)
    except docker.errors.ContainerError as e:
        raise AssertionError(f"in {tag}: {script!r} failed: {e.stderr.decode(errors='replace')[-2000:]}") from None
    return out.decode()


def test_built_image_metadata(built_image):
    variant, tag, attrs = built_image
    config = attrs["Config"]
    assert config["User"] == "1000:1000"
    assert not config.get("Entrypoint"), "KFP sets the command; no ENTRYPOINT"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONUNBUFFERED"] == "1" and env["HOME"] == "/home/polydistill"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert config["WorkingDir"] == "/workspace"
    assert not [k for k in env if SECRET_NAME.search(k)], env
    if variant == "cuda":
        assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    print(f"{tag}: {attrs['Size'] / 1e6:.0f} MB")


def test_built_image_runs_as_its_user_with_the_pinned_versions(built_image, engine):
    variant, tag, _ = built_image
    project = _pyproject()["project"]
    pins = dict(req.split("==") for req in project["dependencies"] + project["optional-dependencies"]["kfp"]
                if "==" in req)
    out = _run_in(engine, tag, """set -e
        id -u; id -g
        for d in /workspace /gcs /minio /s3 "$HOME"; do touch "$d/.w" && rm "$d/.w"; done
        test ! -e /wheelhouse && test ! -e /etc/pip.conf && test ! -e /build
        polydistill --help >/dev/null
        python -c "from importlib.metadata import version as v; import torch
print(*(f'{n}=={v(n)}' for n in ('kfp', 'kfp-kubernetes', 'mlflow', 'polydistill')))
print(torch.__version__, torch.version.cuda)"
    """).split("\n")
    assert out[0:2] == ["1000", "1000"], out
    versions = dict(item.split("==") for item in out[2].split())
    for name in ("kfp", "kfp-kubernetes", "mlflow"):
        assert versions[name] == pins[name], (name, versions[name])
    assert versions["polydistill"] == project["version"]
    torch_version, cuda = out[3].split()
    assert torch_version.split("+")[0] == pins["torch"]
    assert (cuda == "None") is (variant == "cpu"), f"{variant} image has torch {torch_version}, CUDA {cuda}"


def test_built_image_has_no_compiler_test_tool_test_suite_or_pip_cache(built_image, engine):
    """What the runtime never needs stays out (images/README.md, "What the image is made of")."""
    _, tag, _ = built_image
    out = _run_in(engine, tag, """set -e
        site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        for tool in gcc cc g++ c++ make pytest; do command -v "$tool" && echo "has $tool"; done
        find "$site" -type d -name tests | head -n 3
        for p in torch/test torch/include mlflow/server/js; do test -e "$site/$p" && echo "has $p"; done
        find "$site/torch/bin" -maxdepth 1 -type f -printf "%f\\n"
        for d in "$HOME/.cache/pip" /root/.cache/pip /tmp/pip-*; do test -e "$d" && echo "has $d"; done
        python -c "import torch, pandas, sklearn, scipy, pyarrow, mlflow; print('imports')"
    """).split()
    assert out == ["torch_shm_manager", "imports"], out


# ------------------------------------------------------------------------------ the CUDA variant, unbuilt

CUDA_WHEELS = IMAGES / "wheels-cuda.txt"
#: The CUDA pieces torch 2.13.0's linux wheel on PyPI pins exactly (its METADATA's Requires-Dist for Linux).
TORCH_CUDA_PINS = {"cuda-toolkit": "13.0.3", "nvidia-cudnn-cu13": "9.20.0.48", "nvidia-cusparselt-cu13": "0.8.1",
                   "nvidia-nccl-cu13": "2.29.7", "nvidia-nvshmem-cu13": "3.4.5", "triton": "3.7.1"}


def _wheel_list() -> dict[str, str]:
    rows = [line.split("==") for line in CUDA_WHEELS.read_text().splitlines() if line and not line.startswith("#")]
    return {name: version for name, version in rows}


def _wheelhouse_names(variant: str) -> dict[str, str] | None:
    """name -> version of a filled wheelhouse under POLYDISTILL_CACHE_DIR, or None when it is not filled."""
    where = Path(os.environ.get("POLYDISTILL_CACHE_DIR", "/var/cache/polydistill")) / "wheels" / variant
    wheels = sorted(where.glob("*.whl"))
    if not wheels:
        return None
    return {w.name.split("-")[0].lower().replace("_", "-"): w.name.split("-")[1] for w in wheels}


def test_the_cuda_wheel_set_is_torch_with_its_cuda_runtime():
    wheels = _wheel_list()
    assert wheels["torch"] == TORCH_PIN.split("==")[1], "the CUDA torch must be the pinned version, no +cpu"
    for name, version in TORCH_CUDA_PINS.items():
        assert wheels.get(name, "").startswith(version), f"{name}=={version} (torch's pin) missing from {CUDA_WHEELS}"
    assert all(n.startswith(("torch", "triton", "nvidia-", "cuda-")) for n in wheels), sorted(wheels)
    assert not any("+cpu" in v for v in wheels.values())


def test_a_filled_cuda_wheelhouse_is_the_cpu_one_plus_the_cuda_set():
    """Same layout as the CPU image: the same packages, with the CUDA torch and its runtime added."""
    cuda = _wheelhouse_names("cuda")
    if cuda is None:
        pytest.skip("no CUDA wheelhouse filled here (bash scripts/build-image.sh --wheels-only --cuda)")
    wheels = _wheel_list()
    assert set(wheels) <= set(cuda), sorted(set(wheels) - set(cuda))
    # torch and what it pins exactly are the listed versions; the rest (cuda-bindings>=13.0.3,<14) may move on.
    for name in ("torch", *TORCH_CUDA_PINS):
        assert cuda[name] == wheels[name], (name, cuda[name], wheels[name])
    cpu = _wheelhouse_names("cpu")
    if cpu is not None:
        assert set(cuda) - set(wheels) == set(cpu) - {"torch"}, set(cuda) ^ set(cpu)
        assert cpu["torch"].endswith("+cpu")


def test_the_cuda_dockerfile_is_the_cpu_one_with_the_cuda_torch():
    """Same stages, wheelhouse, user and smoke test; only torch's index, the labels and the NVIDIA variables
    differ, and offline the torch install reads the same /wheelhouse (no index can override pip.conf)."""
    cpu, cuda = (_instructions(DOCKERFILES[v]) for v in ("cpu", "cuda"))
    assert [k for k, _ in cpu] == [k for k, _ in cuda if k != "ARG" or "TORCH_CUDA" not in _]
    differ = [(a, b) for a, b in zip(cpu, [i for i in cuda if not (i[0] == "ARG" and "TORCH_CUDA" in i[1])],
                                     strict=True) if a != b]
    kinds = {a[0] for a, _ in differ}
    assert kinds <= {"RUN", "LABEL", "ENV"}, differ
    torch_runs = [b[1] for a, b in differ if a[0] == "RUN" and TORCH_PIN in b[1]]
    assert len(torch_runs) == 1 and "download.pytorch.org/whl/${TORCH_CUDA}" in torch_runs[0]
    assert "+cpu" not in CUDA_WHEELS.read_text() and "whl/cpu" not in DOCKERFILES["cuda"].read_text()
    env = " ".join(rest for k, rest in _final_stage(cuda) if k == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES=all" in env and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env
    smoke = [rest for k, rest in _final_stage(cuda) if k == "RUN" and "pip check" in rest]
    assert smoke and "torch.version.cuda" in smoke[-1]
