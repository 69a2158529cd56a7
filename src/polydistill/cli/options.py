"""Click options generated from config models, and shared CLI helpers."""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .. import config as C


def _click_type(ann: Any) -> Any:
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):  # X | None: an optional setting, None = unset
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return _click_type(args[0]) if len(args) == 1 else str
    if origin is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(ann)])
    if ann is bool:
        return bool
    if ann is int:
        return int
    if ann is float:
        return float
    return str


def config_options(stage: str, aliases: dict[str, str] | None = None, skip: tuple[str, ...] = ()) -> Callable:
    """Decorator adding ``--profile``, ``--config FILE`` and one flag per setting of ``stage``'s config.

    The wrapped command receives ``cfg`` (the resolved, validated config model) instead of the raw flags.
    Each flag is the setting's name (dotted keys of nested models: their last part, ``env.sticky_actions`` ->
    ``--sticky-actions``); ``aliases`` adds a second spelling kept for an existing command
    (``{"total_steps": "steps"}``: ``--total-steps`` and ``--steps``).
    """
    aliases = aliases or {}
    rows = [r for r in C.flag_fields(C.MODELS[stage]) if r[0] not in skip]

    def decorate(fn: Callable) -> Callable:
        params: dict[str, str] = {}  # python identifier -> dotted config key
        for key, ann, desc in reversed(rows):
            names = [key.split(".")[-1].replace("_", "-")]
            names += [aliases[key].replace("_", "-")] if key in aliases else []
            ident = "cfg__" + key.replace(".", "__")
            params[ident] = key
            if ann is bool:
                fn = click.option(*[f"--{n}/--no-{n}" for n in names], ident, default=None, help=desc)(fn)
            else:
                fn = click.option(*[f"--{n}" for n in names], ident, type=_click_type(ann), default=None,
                                  help=desc)(fn)
        fn = click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False),
            default=None,
            help=f"YAML file of {stage} settings (overrides the profile; flags override it).",
        )(fn)
        fn = click.option(
            "--profile",
            type=click.Choice(C.PROFILES),
            default="cpu",
            show_default=True,
            help="Preset sizes: smoke (minutes), cpu (a laptop), paper (the seed protocol).",
        )(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            overrides = {params[k]: kwargs.pop(k) for k in list(kwargs) if k in params}
            profile = kwargs.pop("profile")
            try:
                cfg = C.resolve(stage, profile, kwargs.pop("config_file"), overrides)
            except C.ConfigError as e:
                raise click.UsageError(str(e)) from None
            if getattr(cfg, "device", "auto") != "auto":
                # The device must exist here before any work or file: cuda on a CPU-only machine is a
                # one-line error, not a traceback halfway in.
                from ..networks import DeviceError, pick_device

                try:
                    pick_device(str(getattr(cfg, "device")))  # noqa: B009 (not every stage has a device)
                except DeviceError as e:
                    raise click.UsageError(str(e)) from None
            return fn(*args, cfg=cfg, profile=profile, **kwargs)

        return wrapper

    return decorate


def fail(message: str) -> typing.NoReturn:
    """Stop with a one-line error: ``polydistill: error: MESSAGE`` and status 2 (:mod:`.handler` prints it,
    redacted: URI passwords and tokens, and the values of credential environment variables)."""
    from .handler import InputError

    raise InputError(message)


def writable_dir(path: str | Path, flag: str) -> Path:
    """``path`` as a directory this process can write (created if missing), else a one-line error naming
    ``flag``: a read-only location (``/proc/x``, a read-only mount, no permission) is refused before any work.

    Judged by creating the directory and a probe file in it, not by permission bits: root passes every
    ``os.access`` check yet cannot write a read-only file system.
    """
    import tempfile

    target = Path(path).expanduser()
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as e:
        fail(f"{flag} {target}: cannot write there ({e.strerror or type(e).__name__}); give a writable directory")
    return target
