"""The project image every component runs in, read from the one place its tag is set.

``src/polydistill_kfp/components/IMAGE`` (CPU) and ``IMAGE_CUDA`` beside it hold the tags; nothing else spells them.
They are package data of ``polydistill_kfp.components``, so an installed wheel compiles pipelines as a source checkout
does (``scripts/build-image.sh`` reads the same files to tag what it builds). The files are read when the
component modules are imported, i.e. when a pipeline is compiled; inside a running step the component's code
is executed from the compiled spec, so this module is never needed there. ``polydistill compile --image``
replaces these defaults in the compiled YAML (:mod:`polydistill_kfp.images`).
"""

from __future__ import annotations

from pathlib import Path

TAG_DIR = Path(__file__).resolve().parent
TAG_FILES = {"cpu": "IMAGE", "cuda": "IMAGE_CUDA"}


def read_image(variant: str = "cpu") -> str:
    """The image tag for ``variant`` (``"cpu"`` or ``"cuda"``) from ``src/polydistill_kfp/components/IMAGE[_CUDA]``."""
    name = TAG_FILES.get(variant)
    if name is None:
        raise ValueError(f"unknown image variant {variant!r}; use 'cpu' or 'cuda'")
    path = TAG_DIR / name
    try:
        tag = path.read_text().strip()
    except FileNotFoundError:
        raise RuntimeError(
            f"{path} is missing: reinstall polydistill (the file is package data of polydistill_kfp.components)"
        ) from None
    if not tag or any(c.isspace() for c in tag):
        raise RuntimeError(f"{path} must hold one image reference on one line, got {tag!r}")
    return tag


IMAGE = read_image("cpu")
IMAGE_CUDA = read_image("cuda")
