"""MLflow tracking: uRIs, secrets, flattening."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..redaction import redact_uri
from .names import (
    _BAD_NAME_CHARS,
    _MAX_KEY_LEN,
    _MAX_PARAM_LEN,
    _MAX_TAG_LEN,
    _MIN_SECRET_LEN,
    _NOT_SECRET_VALUES,
    _SECRET_PAIRS,
    _SECRET_WORDS,
)


def resolve_tracking_uri(uri: str | None, run_dir: str | Path | None) -> str:
    """Return the tracking URI to use: ``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else SQLite.

    The SQLite fallback is ``sqlite:///<run_dir>/mlflow.db`` (absolute), or ``./mlflow.db`` when
    ``run_dir`` is None too. A plain path given as ``uri`` is taken as a SQLite database file.
    """
    if uri:
        if "://" not in uri and not uri.startswith("sqlite:"):
            return f"sqlite:///{Path(uri).expanduser().resolve()}"
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    base = Path(run_dir) if run_dir is not None else Path.cwd()
    return f"sqlite:///{(base / 'mlflow.db').expanduser().resolve()}"


def _secret_values() -> list[str]:
    """Credential values to hide: env vars whose name looks secret, and the store's known credentials."""
    values = {
        v
        for k, v in os.environ.items()
        if len(v) >= _MIN_SECRET_LEN and v.lower() not in _NOT_SECRET_VALUES and not v.isdigit()
        and is_secret_key(k)
    }
    with contextlib.suppress(ImportError, AttributeError):
        from ..store import credentials as store

        values |= {v for v in store._known_secrets if v and len(v) >= _MIN_SECRET_LEN}
        for name in (*store.ACCESS_KEY_VARS, *store.SECRET_KEY_VARS, store.SESSION_TOKEN_VAR):
            v = os.environ.get(name)
            if v and len(v) >= _MIN_SECRET_LEN:
                values.add(v)
    return sorted(values, key=len, reverse=True)  # longest first: a secret containing another goes whole


def redact_text(text: str, secrets: Sequence[str] | None = None) -> str:
    """``text`` with credential values, URI passwords/tokens and credential query values replaced by
    ``***`` (:func:`polydistill.redaction.redact_uri`)."""
    return redact_uri(text, _secret_values() if secrets is None else secrets)


def safe_tracking_uri(uri: str) -> str:
    """The tracking URI for messages: no password, no query string (which may carry tokens)."""
    return redact_text(uri.split("?", 1)[0])


def is_secret_key(name: str) -> bool:
    """Whether a parameter/tag/metadata key or an env var name names a credential (``secret_key``,
    ``AWS_SECRET_ACCESS_KEY``, ``accesskey``, ``password``, ``MLFLOW_TRACKING_TOKEN``, ``apiKey``)."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())
    pairs = set(itertools.pairwise(words))
    return bool(_SECRET_WORDS.intersection(words) or _SECRET_PAIRS.intersection(pairs))


def _to_plain(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):  # pydantic configs
        return obj.model_dump(mode="json")
    return obj


def flatten_params(obj: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, str]:
    """Flatten a (nested) config into ``{dotted.key: str}`` for MLflow params, without secrets.

    Nested mappings (and pydantic models) become dotted keys; lists become JSON. Keys naming a credential
    are dropped; values containing a credential are redacted. Values are cut to MLflow's 6,000 characters.
    """
    secrets = _secret_values()
    out: dict[str, str] = {}

    def walk(node: Any, pre: str) -> None:
        node = _to_plain(node)
        if isinstance(node, Mapping):
            for k, v in node.items():
                key = f"{pre}{k}"
                if is_secret_key(str(k)):
                    continue
                walk(v, f"{key}.")
            return
        key = pre[:-1]
        if isinstance(node, list | tuple | set):
            text = json.dumps(list(node), default=str)
        elif isinstance(node, float) and not math.isfinite(node):
            text = str(node)
        else:
            text = str(node)
        out[_clean_name(key)] = redact_text(text, secrets)[:_MAX_PARAM_LEN]

    walk(obj, prefix)
    return out


def _clean_name(name: str) -> str:
    """A param/metric/tag key MLflow accepts (no odd characters, no '..' segments, <= 250 chars)."""
    name = _BAD_NAME_CHARS.sub("_", name).strip("/") or "_"
    name = "/".join(p if p not in (".", "..") else "_" for p in name.split("/"))
    return name[:_MAX_KEY_LEN]


def _sanitize_json(obj: Any, secrets: Sequence[str]) -> Any:
    """A JSON-able copy of ``obj`` with credential keys dropped and credential values redacted."""
    obj = _to_plain(obj)
    if isinstance(obj, Mapping):
        return {str(k): _sanitize_json(v, secrets) for k, v in obj.items() if not is_secret_key(str(k))}
    if isinstance(obj, list | tuple | set):
        return [_sanitize_json(v, secrets) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    if isinstance(obj, bool | int | type(None)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, np.generic):
        return _sanitize_json(obj.item(), secrets)
    return redact_text(str(obj), secrets)


def _clean_tags(tags: Mapping[str, Any], secrets: Sequence[str]) -> dict[str, str]:
    return {
        _clean_name(str(k)): redact_text(str(v), secrets)[:_MAX_TAG_LEN]
        for k, v in tags.items()
        if not is_secret_key(str(k)) and v is not None
    }


