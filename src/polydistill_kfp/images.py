"""Which image each compiled task runs in: the defaults (``src/polydistill_kfp/components/IMAGE`` and ``IMAGE_CUDA``)
or what ``compile``, ``submit`` and ``schedule`` were given (``--image``, ``--image-cuda``, ``--registry``).

The compiled YAML names a task's image in its executor (``deploymentSpec.executors.<name>.container.image``);
the Kubeflow backend copies it into the pod through the driver's pod spec patch (``container.go`` at 2.15.0:
"PodSpecPatch input param is where actual image, command and args come from"; the template's own image is a
placeholder, ``gcr.io/ml-pipeline/should-be-overridden-during-runtime``). So retargeting a compiled file means
replacing those values, and every one of them must be one of the two defaults before and a given image after.

``scripts/push-image.sh REGISTRY`` pushes the built images and writes ``images/pushed.env``
(``POLYDISTILL_IMAGE=REGISTRY/polydistill@sha256:...``, ``POLYDISTILL_IMAGE_CUDA=...``), the variables these
options read, so a compile after a push names the images by digest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from polydistill.errors import PolydistillError

#: Environment variables that hold ``--image`` and ``--image-cuda`` (``images/pushed.env`` sets them).
IMAGE_ENV = "POLYDISTILL_IMAGE"
IMAGE_CUDA_ENV = "POLYDISTILL_IMAGE_CUDA"

# A Docker/OCI reference: [host[:port]/]path[:tag][@sha256:hex]; path components lower case.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9-]+)*(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?)"
_NAME = rf"(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}"
REFERENCE = re.compile(rf"^(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$")
REGISTRY = re.compile(rf"^{_HOST}(?:/{_COMPONENT})*$")
_IMAGE_LINE = re.compile(r"^(\s+image: )(\S+)$", re.MULTILINE)


class ImageError(PolydistillError, ValueError):
    """A bad ``--image``, ``--image-cuda`` or ``--registry``, or a compiled file whose images are not ours."""


def check_reference(ref: str, option: str) -> str:
    """``ref`` if it is a valid image reference, else :class:`ImageError` naming ``option``."""
    ref = ref.strip()
    if not REFERENCE.match(ref):
        raise ImageError(f"{option} {ref!r} is not an image reference; give REGISTRY/NAME:TAG or "
                         f"REGISTRY/NAME@sha256:DIGEST (lower case), e.g. 127.0.0.1:5000/polydistill:0.1.0")
    return ref


def in_registry(default: str, registry: str) -> str:
    """``default`` moved to ``registry`` (a host with an optional path): the last path component and the tag
    stay, e.g. ``ghcr.io/polydistill/polydistill:0.1.0`` -> ``REGISTRY/polydistill:0.1.0``."""
    registry = registry.strip().rstrip("/")
    if not REGISTRY.match(registry):
        raise ImageError(f"--registry {registry!r} is not a registry prefix; give HOST[:PORT][/PATH], "
                         "e.g. 127.0.0.1:5000 or registry.example.com/team")
    m = REFERENCE.match(default)
    if m is None:  # the defaults are checked by components/image.py's readers and tests/test_images.py
        raise ImageError(f"default image {default!r} is not an image reference")
    last = m["name"].rsplit("/", 1)[-1]
    return f"{registry}/{last}" + (f":{m['tag']}" if m["tag"] else "") + (f"@{m['digest']}" if m["digest"] else "")


@dataclass(frozen=True)
class Images:
    """The image of the CPU tasks and of the GPU tasks (the paper variant's training tasks)."""

    cpu: str
    cuda: str

    @classmethod
    def defaults(cls) -> Images:
        from .components.image import IMAGE, IMAGE_CUDA

        return cls(IMAGE, IMAGE_CUDA)

    @classmethod
    def choose(cls, image: str | None = None, image_cuda: str | None = None,
               registry: str | None = None) -> Images:
        """The images to compile with: ``image``/``image_cuda`` where given, else the defaults moved to
        ``registry`` where given, else the defaults."""
        base = cls.defaults()
        cpu, cuda = base.cpu, base.cuda
        if registry:
            cpu, cuda = in_registry(cpu, registry), in_registry(cuda, registry)
        if image:
            cpu = check_reference(image, "--image")
        if image_cuda:
            cuda = check_reference(image_cuda, "--image-cuda")
        return cls(cpu, cuda)


def retarget(path: str | Path, images: Images) -> Path:
    """Rewrite the compiled pipeline ``path`` in place so that every task runs in ``images``.

    Only the executors' ``image:`` lines change (the rest of the file stays byte for byte what kfp wrote);
    an image that is neither default raises :class:`ImageError` before anything is written."""
    path = Path(path)
    text = path.read_text()
    base = Images.defaults()
    swap = {base.cpu: images.cpu, base.cuda: images.cuda}
    unknown = sorted({m[2] for m in _IMAGE_LINE.finditer(text)} - set(swap))
    if unknown:
        raise ImageError(f"{path} names image(s) {', '.join(unknown)}, not the defaults {base.cpu} and "
                         f"{base.cuda}: compile it again from this version of polydistill")
    new = _IMAGE_LINE.sub(lambda m: m[1] + swap[m[2]], text)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    wrong = {n: i for n, i in task_images(tmp).items() if i not in (images.cpu, images.cuda)}
    if wrong:  # a reference YAML would read as something else
        tmp.unlink()
        raise ImageError(f"the images given do not survive in {path.name}: {wrong}")
    tmp.replace(path)
    return path


def task_images(path: str | Path) -> dict[str, str]:
    """Executor name -> image of the compiled pipeline ``path`` (its first YAML document)."""
    import yaml

    with open(path) as f:
        spec = next(yaml.safe_load_all(f))
    return {name: ex["container"]["image"] for name, ex in spec["deploymentSpec"]["executors"].items()}
