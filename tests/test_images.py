"""Static checks of the project image's Dockerfiles (images/Dockerfile, images/Dockerfile.cuda).

No Docker engine runs on the development or CI machines, so nothing is built here. The Dockerfiles are parsed
as text (continuation lines joined, comments dropped, `ARG` defaults substituted) and checked against
pyproject.toml, read with tomllib: torch==2.13.0 is installed before the package, the kfp pins are the ones
of pyproject's `kfp` extra, the base image is pinned, the image runs as a numeric non-root user, and so on.
A real build additionally runs the image's own smoke test (`RUN python -c "import polydistill, ale_py, kfp"`).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
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
    package_at = [i for i, run in pip_runs if re.search(r"""pip install ["']?\.\[kfp\]""", run)]
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


def test_environment_and_no_entrypoint(dockerfile):
    variant, ins = dockerfile
    final = _final_stage(ins)
    env = " ".join(rest for keyword, rest in final if keyword == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    if variant == "cuda":
        assert "NVIDIA_VISIBLE_DEVICES=all" in env
        assert "compute" in env
    # KFP sets the container command of every component.
    assert not [rest for keyword, rest in ins if keyword == "ENTRYPOINT"]


def test_smoke_import_runs_as_the_user_after_install(dockerfile):
    _, ins = dockerfile
    last_user = max(i for i, (keyword, _) in enumerate(ins) if keyword == "USER")
    smoke = [i for i, run in _runs(ins) if 'python -c "import polydistill, ale_py, kfp' in run]
    assert smoke, 'missing RUN python -c "import polydistill, ale_py, kfp"'
    assert smoke[-1] > last_user


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


def test_copy_sources_exist_and_reach_the_build_context(dockerfile):
    _, ins = dockerfile
    patterns = _dockerignore()
    for keyword, rest in ins:
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        for source in sources:
            if any(ch in source for ch in "*?["):
                continue  # a glob may match nothing (README.md*): BuildKit allows that
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not _ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


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
        ("pipelines/compiled/polydistill.yaml", False),
        ("components/train_teacher.py", False),
    ],
)
def test_dockerignore(path, ignored):
    assert _ignored(path, _dockerignore()) is ignored


def test_image_tag_files_hold_one_tag_each():
    version = _pyproject()["project"]["version"]
    texts = {name: (IMAGES / name).read_text() for name in ("IMAGE", "IMAGE_CUDA")}
    for name, text in texts.items():
        assert len(text.splitlines()) == 1 and text.strip() == text.splitlines()[0], (
            f"{name}: one line, no blanks"
        )
    cpu, cuda = texts["IMAGE"].strip(), texts["IMAGE_CUDA"].strip()
    # The tag follows the package version, so a release bumps both together.
    assert cpu == f"ghcr.io/polydistill/polydistill:{version}"
    assert cuda == f"{cpu}-cuda"
