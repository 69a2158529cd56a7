"""Compile the pipeline variants to KFP IR YAML (the committed files under ``src/polydistill_kfp/compiled/``).

``tests/test_pipeline.py`` recompiles into a temporary directory and fails when a committed file differs, so
the YAML under version control always matches the code: after changing a component or the DAG, run
``polydistill compile``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .images import Images

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"


def compiled_name(variant: str) -> str:
    """File name of a variant's compiled YAML (``polydistill.yaml``, ``polydistill-paper.yaml``)."""
    return f"{variant}.yaml"


def default_out_dir() -> Path:
    """Where ``polydistill compile`` writes without ``--out``: the committed ``src/polydistill_kfp/compiled/`` in a
    source checkout, ``./compiled`` for an installed package (never into site-packages)."""
    in_checkout = (COMPILED_DIR.parents[2] / "pyproject.toml").is_file()
    return COMPILED_DIR if in_checkout else Path("compiled")


def compile_pipeline(variant: str, path: str | Path, images: Images | None = None) -> Path:
    """Compile ``variant`` (a key of :data:`polydistill_kfp.pipeline.VARIANTS`) to ``path``, with every task
    in ``images`` (default: the tags in ``src/polydistill_kfp/components/IMAGE[_CUDA]``)."""
    from kfp import compiler

    from .pipeline import PIPELINES

    if variant not in PIPELINES:
        raise ValueError(f"unknown pipeline variant {variant!r}; choose one of {', '.join(PIPELINES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if images is None:
        compiler.Compiler().compile(PIPELINES[variant], str(path))
        return path
    from .images import retarget

    # Compiled next to the target and moved there retargeted: a failure leaves any older file as it was.
    tmp = path.with_name(f".{path.name}.compiling.yaml")
    try:
        compiler.Compiler().compile(PIPELINES[variant], str(tmp))
        retarget(tmp, images).replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def compile_all(out_dir: str | Path = COMPILED_DIR, images: Images | None = None) -> list[Path]:
    """Compile every variant into ``out_dir``; returns the files written."""
    from .pipeline import VARIANTS

    return [compile_pipeline(v, Path(out_dir) / compiled_name(v), images) for v in VARIANTS]


if __name__ == "__main__":
    for p in compile_all():
        print(p)
