"""Every task of a local run in the project image (``polydistill run --runner docker``).

kfp's ``DockerRunner`` starts one container per task from the image the component names
(``src/polydistill_kfp/components/IMAGE``, read by ``polydistill_kfp.components.image``), so a local run exercises
exactly what a cluster would pull. It is set up the way a pod runs the task:

- **as the image's own user** (its numeric ``USER``, 1000:1000), not root; the run directory is handed to that
  user (root callers) or must already be writable by it;
- **no network but the container's loopback** (``network_mode=none``): the tasks reach nothing, so the store
  must be ``file://`` and MLflow a SQLite file, both on this machine;
- **the same paths inside as outside**: kfp bind-mounts its pipeline root at its own path; the run directory,
  the store and the MLflow database's directory are bind-mounted the same way, so every URI and artifact path
  a task writes is valid on the host afterwards (the report task's paths, MLflow's artifact URIs).

The engine is the one ``DOCKER_HOST`` names; when it is unset and the default socket is missing, the engine
that ``scripts/docker-engine.sh`` starts is used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from polydistill.errors import PolydistillError

#: The socket scripts/docker-engine.sh serves (POLYDISTILL_DOCKER_RUN changes its directory).
ENGINE_SOCKET = Path(os.environ.get("POLYDISTILL_DOCKER_RUN", "/run/polydistill-docker")) / "docker.sock"
DEFAULT_SOCKET = Path("/var/run/docker.sock")
#: Containers get their own loopback and nothing else.
NETWORK_MODE = "none"
BUILD_HINT = "build it with: bash scripts/build-image.sh --offline (or without --offline where PyPI is reachable)"


class DockerRunError(PolydistillError, RuntimeError):
    """The docker runner cannot start: a one-line reason and what to do."""


def engine_host() -> str:
    """The engine's address, setting ``DOCKER_HOST`` for kfp when only scripts/docker-engine.sh's socket exists."""
    host = os.environ.get("DOCKER_HOST")
    if not host and not DEFAULT_SOCKET.exists() and ENGINE_SOCKET.exists():
        host = os.environ["DOCKER_HOST"] = f"unix://{ENGINE_SOCKET}"
    return host or f"unix://{DEFAULT_SOCKET}"


def local_dir(uri: str, what: str) -> Path:
    """The directory on this machine behind a store URI (``file://``, a plain path) or a tracking URI
    (``sqlite:///FILE``: its directory, which also gets ``mlartifacts/``); anything that needs a network fails."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path) if parsed.scheme else uri)
    elif parsed.scheme == "sqlite":
        path = Path(unquote(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else "").parent
        if not uri.startswith("sqlite:///"):
            raise DockerRunError(f"{what} {uri!r}: expected sqlite:///PATH")
    else:
        raise DockerRunError(f"{what} {uri!r} needs a network, and --runner docker gives tasks none (loopback "
                             f"only): use a file:// store and a sqlite:/// tracking URI, or --runner subprocess")
    if not path.is_absolute():
        raise DockerRunError(f"{what} {uri!r}: --runner docker needs an absolute path (the same inside and out)")
    return path


def parse_user(user: str, image: str) -> tuple[int, int]:
    """``uid:gid`` (or ``uid``) of an image's ``USER``; a name or root is refused, as a cluster's
    ``runAsNonRoot`` would."""
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user or "")
    if not match:
        raise DockerRunError(f"image {image} declares USER {user!r}; the docker runner needs a numeric uid:gid")
    uid = int(match[1])
    gid = int(match[2]) if match[2] is not None else uid
    if uid == 0:
        raise DockerRunError(f"image {image} runs as root; the project image runs as a non-root user")
    return uid, gid


def hand_over(dirs: Iterable[Path], uid: int, gid: int, owned: Iterable[Path] = ()) -> None:
    """Make ``dirs`` writable by ``uid:gid``: the run's own directories (``owned``, created by this run) are
    chowned whole when we are root; any other directory must already be writable by that user."""
    owned = {p.resolve() for p in owned}
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        if d.resolve() in owned and os.geteuid() == 0:
            for root, subdirs, files in os.walk(d):
                for name in (*subdirs, *files):
                    os.lchown(os.path.join(root, name), uid, gid)
            os.chown(d, uid, gid)
            continue
        st = d.stat()
        writable = (st.st_uid == uid and st.st_mode & 0o200) or (st.st_gid == gid and st.st_mode & 0o020) \
            or st.st_mode & 0o002
        if not writable:
            raise DockerRunError(f"{d} is not writable by the image's user {uid}:{gid}; run as root, as uid {uid}, "
                                 f"or chown {uid}:{gid} {d}")


def make_runner(image: str, dirs: Iterable[Path], environment: Mapping[str, str],
                owned: Iterable[Path] = ()) -> Any:
    """kfp's ``DockerRunner`` for ``image``: its user, no network, ``dirs`` mounted at their own paths.

    Args:
        image: the tag the components run in (``polydistill_kfp.components.image.IMAGE``).
        dirs: directories the tasks read and write (run directory, store, MLflow's); kfp adds its pipeline root.
        environment: variables for every task (e.g. the loop tasks' torch threads).
        owned: those of ``dirs`` this run created, which may be chowned to the image's user.
    Raises:
        DockerRunError: no Docker SDK, no engine, no image, or a directory the image's user cannot write.
    """
    try:
        import docker
        from docker.types import Mount
        from kfp import local
    except ImportError as e:
        raise DockerRunError(f"--runner docker needs the Docker SDK ({e}); pip install 'polydistill[docker]'") from None
    host = engine_host()
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        raise DockerRunError(f"no Docker engine answers at {host} ({type(e).__name__}); start one: "
                             f"sudo bash scripts/docker-engine.sh start, then export DOCKER_HOST=unix://{ENGINE_SOCKET}"
                             ) from None
    try:
        config = client.images.get(image).attrs.get("Config") or {}
    except docker.errors.ImageNotFound:
        raise DockerRunError(f"image {image} is not in the Docker engine at {host}; {BUILD_HINT}") from None
    finally:
        client.close()
    uid, gid = parse_user(config.get("User", ""), image)
    unique = sorted({d.resolve() for d in dirs})
    # A directory inside another one is covered by the outer mount.
    mounts = [d for d in unique if not any(d != o and d.is_relative_to(o) for o in unique)]
    hand_over(mounts, uid, gid, owned)
    return local.DockerRunner(
        user=f"{uid}:{gid}",
        network_mode=NETWORK_MODE,
        mounts=[Mount(target=str(d), source=str(d), type="bind") for d in mounts],
        environment=dict(environment),
    )
