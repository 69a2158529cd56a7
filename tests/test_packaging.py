"""The package installs whole: the wheel holds every subpackage, and a non-editable install of it runs the CLI.

An editable install (what development and ``scripts/setup.sh`` use) imports from the source tree, so a package
missing from pyproject's ``packages`` list goes unnoticed there; it broke every real install once
(``polydistill.cli`` was left out: ``ModuleNotFoundError`` from the ``polydistill`` command, in the image too).
Here the wheel is built from a copy of the sources, installed into a fresh virtualenv (system site packages
for torch and the other dependencies, the package itself only from the wheel), and run from there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import click
import pytest

from polydistill.cli import main

ROOT = Path(__file__).resolve().parents[1]
#: What the wheel is built from (pyproject's package-dir), copied so the build leaves nothing in the checkout.
SOURCES = ("pyproject.toml", "README.md", "src")


def _package_dirs() -> dict[str, Path]:
    """Package name -> directory, from pyproject's ``package-dir`` mapping."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {}
    for name, where in tool["package-dir"].items():
        if name:
            dirs[name] = ROOT / where
        else:  # "" = the root of plain packages: every top-level package under it
            for init in (ROOT / where).glob("*/__init__.py"):
                dirs[init.parent.name] = init.parent
    return dirs


def test_pyproject_lists_every_package_directory():
    """Every directory with an ``__init__.py`` under a mapped package is in ``packages`` (and only those)."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for name, where in _package_dirs().items():
        for init in where.rglob("__init__.py"):
            rel = init.parent.relative_to(where)
            if "__pycache__" in rel.parts:
                continue
            found.add(".".join((name, *rel.parts)))
    # A mapped subpackage (polydistill_kfp.components) is found under its own directory, not its parent's.
    assert listed == found, f"pyproject packages {sorted(listed)} != package directories {sorted(found)}"


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> tuple[Path, Path]:
    """(wheel, venv): the wheel built from a copy of the sources and a fresh virtualenv with it installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src-copy"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(dist), str(src)], check=True)
    (wheel,) = dist.glob("polydistill-*.whl")
    venv = tmp / "venv"
    # System site packages: torch, kfp, mlflow come from the machine; polydistill only from the wheel.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                    str(wheel)], check=True)
    return wheel, venv


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_holds_every_package(wheel_venv):
    wheel, _ = wheel_venv
    names = zipfile.ZipFile(wheel).namelist()
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for package in listed:
        assert f"{package.replace('.', '/')}/__init__.py" in names, f"{package} is not in {wheel.name}"
    assert "polydistill/cli/pipeline.py" in names
    assert "polydistill_kfp/compiled/polydistill.yaml" in names  # package data


def test_installed_wheel_is_what_runs(wheel_venv, tmp_path):
    """Not the editable checkout: the module imported in the venv lies inside the venv."""
    _, venv = wheel_venv
    out = _run(venv, "python", "-c", "import polydistill, polydistill.cli, polydistill_kfp.components.runtime as r;"
               "print(polydistill.__file__); print(r.__file__)", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for line in out.stdout.split():
        assert Path(line).resolve().is_relative_to(venv.resolve()), f"{line} is not from the wheel's venv"


def test_installed_cli_runs_every_subcommands_help(wheel_venv, tmp_path):
    _, venv = wheel_venv
    commands = sorted(main.commands)
    assert {"run", "train-teacher", "buffer-info", "report"} <= set(commands)
    out = _run(venv, "polydistill", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for command in commands:
        out = _run(venv, "polydistill", command, "--help", cwd=tmp_path)
        assert out.returncode == 0, f"polydistill {command} --help: {out.stderr}"
        assert out.stdout.startswith(f"Usage: polydistill {command}"), out.stdout[:200]
    assert isinstance(main, click.Group)


def test_installed_cli_runs_real_stages(wheel_venv, tmp_path):
    """Two real stages from the wheel: a random agent plays Pong (ALE and its ROMs), then the report."""
    _, venv = wheel_venv
    out = _run(venv, "polydistill", "evaluate", "--agent", "random", "--game", "Pong", "--label", "random",
               "--protocol", "cycles", "--cycles", "1", "--cycle-steps", "40", "--num-envs", "1",
               "--out", str(tmp_path / "eval"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert scores, "evaluate wrote no scores"
    out = _run(venv, "polydistill", "report", str(tmp_path / "eval" / "scores.json"), "--out",
               str(tmp_path / "report"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Pong" in (tmp_path / "report" / "report.md").read_text()


def test_the_wheel_is_whole_in_use_outside_the_checkout(wheel_venv, tmp_path):
    """Issue #31: what the pipeline commands read (the image tags, the compiled YAML) ships in the wheel, so
    compile, run --help and submit --help work from a directory with no checkout in sight."""
    wheel, venv = wheel_venv
    names = zipfile.ZipFile(wheel).namelist()
    assert {"polydistill_kfp/components/IMAGE", "polydistill_kfp/components/IMAGE_CUDA"} <= set(names)
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert not any((parent / "pyproject.toml").exists() for parent in (work, *work.parents))
    out = _run(venv, "polydistill", "compile", cwd=work)
    assert out.returncode == 0, out.stderr[-2000:]
    # Outside a checkout the default --out is ./compiled, never the installed package's directory.
    written = sorted(p.name for p in (work / "compiled").glob("*.yaml"))
    assert written == ["polydistill-paper.yaml", "polydistill.yaml"], out.stdout
    images = (ROOT / "src" / "polydistill_kfp" / "components" / "IMAGE").read_text().strip()
    assert f"image: {images}" in (work / "compiled" / "polydistill.yaml").read_text()
    for args in (("run", "--profile", "smoke", "--help"), ("submit", "--help")):
        out = _run(venv, "polydistill", *args, cwd=work)
        assert out.returncode == 0, f"polydistill {' '.join(args)}: {out.stderr[-2000:]}"
        assert out.stdout.startswith(f"Usage: polydistill {args[0]}"), out.stdout[:200]
    assert "--image" in out.stdout and "--registry" in out.stdout
