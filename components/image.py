"""The project image every component runs in, read from the one place its tag is set.

``images/IMAGE`` (CPU) and ``images/IMAGE_CUDA`` hold the tags; nothing else spells them. The files are read
when the component modules are imported, i.e. when a pipeline is compiled from a source checkout. Inside a
running step the component's code is executed from the compiled spec, so this module is never needed there.
"""

from __future__ import annotations

from pathlib import Path

IMAGES_DIR = Path(__file__).resolve().parent.parent / "images"


def read_image(variant: str = "cpu") -> str:
    """The image tag for ``variant`` (``"cpu"`` or ``"cuda"``) from ``images/IMAGE[_CUDA]``."""
    name = {"cpu": "IMAGE", "cuda": "IMAGE_CUDA"}.get(variant)
    if name is None:
        raise ValueError(f"unknown image variant {variant!r}; use 'cpu' or 'cuda'")
    path = IMAGES_DIR / name
    try:
        tag = path.read_text().strip()
    except FileNotFoundError:
        raise RuntimeError(
            f"{path} is missing: compile pipelines from a source checkout, where images/{name} sets the tag"
        ) from None
    if not tag or any(c.isspace() for c in tag):
        raise RuntimeError(f"{path} must hold one image reference on one line, got {tag!r}")
    return tag


IMAGE = read_image("cpu")
IMAGE_CUDA = read_image("cuda")
