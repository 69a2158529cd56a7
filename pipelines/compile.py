"""Compile the pipeline variants to KFP IR YAML (the committed files under ``pipelines/compiled/``).

``tests/test_pipeline.py`` recompiles into a temporary directory and fails when a committed file differs, so
the YAML under version control always matches the code: after changing a component or the DAG, run
``polydistill compile``.
"""

from __future__ import annotations

from pathlib import Path

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"


def compiled_name(variant: str) -> str:
    """File name of a variant's compiled YAML (``polydistill.yaml``, ``polydistill-paper.yaml``)."""
    return f"{variant}.yaml"


def compile_pipeline(variant: str, path: str | Path) -> Path:
    """Compile ``variant`` (a key of :data:`polydistill_kfp.pipeline.VARIANTS`) to ``path``."""
    from kfp import compiler

    from .pipeline import PIPELINES

    if variant not in PIPELINES:
        raise ValueError(f"unknown pipeline variant {variant!r}; choose one of {', '.join(PIPELINES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(PIPELINES[variant], str(path))
    return path


def compile_all(out_dir: str | Path = COMPILED_DIR) -> list[Path]:
    """Compile every variant into ``out_dir``; returns the files written."""
    from .pipeline import VARIANTS

    return [compile_pipeline(v, Path(out_dir) / compiled_name(v)) for v in VARIANTS]


if __name__ == "__main__":
    for p in compile_all():
        print(p)
