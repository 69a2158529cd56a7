"""The run directory every training stage (teacher, autoencoder, distillation) works in, and its one rule for
resuming.

Layout::

    run.json              what the run trains (its identity), its config, status ("running" / "finished")
    resume/LATEST         the name of the newest complete resume point
    resume/step-N/        one resume point (each stage writes its own files into it)

Lifecycle (:class:`RunDir`):

1. :meth:`RunDir.open` checks ``out`` against what this call asks for, before any work: an empty or missing
   directory starts a new run; a directory with another stage's files, a file, or a corrupt ``run.json`` is
   refused; a previous run is resumed (or reused when finished) only if its identity (the game, the dataset's
   manifest sha256, the teachers: each stage names its keys) is the same and every config setting is the same
   except the stage's *resume-free* settings (``resume_free`` on each config model in
   :mod:`polydistill.config`: settings such as the device or the checkpoint interval that cannot change what is
   trained). Anything else is a one-line error naming the setting, both values and the fix.
2. :meth:`RunDir.begin` writes ``run.json`` (status ``running``) once the checks have passed, so a refused call
   leaves nothing behind.
3. :meth:`RunDir.save_resume` writes a complete resume point into a hidden directory, renames it into place and
   only then moves ``resume/LATEST`` (one atomic rename), so a kill at any moment leaves the previous point
   intact; :meth:`RunDir.latest_resume` finds it again.
4. :meth:`RunDir.finish` writes the final ``run.json`` (status ``finished`` and the stage's summary) and drops
   the resume points unless the stage keeps them to extend the run later.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from .checkpoint import RUN_RECORD, atomic_write_json, read_run_record
from .errors import PolydistillError

RESUME_DIR = "resume"
LATEST = "LATEST"
STATUS_RUNNING = "running"
STATUS_FINISHED = "finished"
_IGNORED = frozenset({".DS_Store"})


def _short(value: Any) -> str:
    """A value as it reads in an error: hashes cut to 12 characters."""
    return f"'{value[:12]}...'" if isinstance(value, str) and len(value) == 64 else repr(value)


class RunDir:
    """One stage's run directory ``out``; ``stage`` ("teacher", "autoencoder", "distillation") names it in
    errors, which are raised as ``error`` (the stage's :class:`~polydistill.errors.PolydistillError`)."""

    def __init__(self, out: str | Path, stage: str, error: type[PolydistillError]) -> None:
        self.out = Path(out)
        self.stage = stage
        self.error = error
        self.previous: dict[str, Any] | None = None

    @property
    def _a(self) -> str:
        """The stage with its article, as errors read ("a teacher", "an autoencoder")."""
        return f"{'an' if self.stage[:1] in 'aeiou' else 'a'} {self.stage}"

    @property
    def record_path(self) -> Path:
        """``run.json``."""
        return self.out / RUN_RECORD

    @property
    def resume_root(self) -> Path:
        """``resume/``: the resume points."""
        return self.out / RESUME_DIR

    # ------------------------------------------------------------------------------------------------ open

    def open(
        self,
        identity: Mapping[str, Any],
        config: Mapping[str, Any],
        resume_free: Collection[str],
        describe: Mapping[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """Check ``out`` for a run of ``identity`` with ``config``; return the previous ``run.json`` to resume
        or reuse, or None for a new run.

        Args:
            identity: what the run trains (``{"game": "Pong"}``); every key must equal the previous run's.
            config: the stage's config as JSON (``cfg.model_dump(mode="json")``).
            resume_free: config keys that may differ from the previous run's.
            describe: per identity key, how a mismatch reads after "holds a teacher run" ("for {old}, not
                {new}"); ``{old}`` and ``{new}`` are replaced by the previous and the requested value.
        Raises:
            the stage's error: ``out`` is a file, holds something else, or a run that this call may not resume.
        """
        prev = read_run_record(self.out, self.error, self.stage)
        if prev is None:
            if self.out.is_dir() and any(p.name not in _IGNORED for p in self.out.iterdir()):
                raise self.error(
                    f"--out {self.out} is not empty and holds no {self.stage} run; use an empty directory"
                )
            self.previous = None
            return None
        for key, new in identity.items():
            old = prev.get(key)
            if old != new:
                how = (describe or {}).get(key, f"with {key}={{old}}, not {{new}}")
                raise self.error(
                    f"--out {self.out} holds {self._a} run {how.format(old=_short(old), new=_short(new))}; "
                    f"use another --out directory"
                )
        old_cfg = prev.get("config", {})
        changed = sorted(k for k in config if k not in resume_free and old_cfg.get(k) != config[k])
        if changed:
            shown = ", ".join(f"{k}={old_cfg.get(k)!r} there vs {config[k]!r} now" for k in changed)
            free = ", ".join(sorted(resume_free)) or "none"
            raise self.error(
                f"--out {self.out} holds {self._a} run with other settings ({shown}); resume with the same "
                f"settings (only {free} may change) or use a new --out directory"
            )
        self.previous = prev
        return prev

    @property
    def finished(self) -> bool:
        """Whether the previous run found by :meth:`open` had finished."""
        return bool(self.previous) and self.previous.get("status") == STATUS_FINISHED  # type: ignore[union-attr]

    # ------------------------------------------------------------------------------------------------ write

    def begin(self, record: Mapping[str, Any]) -> None:
        """Create ``out`` and write ``run.json`` with status ``running`` (after every check has passed)."""
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.record_path, {**record, "status": STATUS_RUNNING})

    def finish(self, record: Mapping[str, Any], keep_resume: bool = False) -> None:
        """Write the final ``run.json`` (status ``finished``); drop the resume points unless ``keep_resume``."""
        atomic_write_json(self.record_path, {**record, "status": STATUS_FINISHED})
        if not keep_resume:
            shutil.rmtree(self.resume_root, ignore_errors=True)

    def save_resume(self, step: int, write: Callable[[Path], None]) -> Path:
        """Write resume point ``step-<step>`` with ``write(directory)``, then switch ``LATEST`` to it atomically
        and delete the older points. Returns the point's directory."""
        root = self.resume_root
        name = f"step-{step:012d}"
        tmp = root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        pointer = root / f".{LATEST}.tmp"
        pointer.write_text(name)
        pointer.replace(root / LATEST)
        for old in root.glob("step-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def latest_resume(self, required: Collection[str] = ()) -> Path | None:
        """The newest complete resume point (one holding every file in ``required``), or None."""
        pointer = self.resume_root / LATEST
        if not pointer.is_file():
            return None
        d = self.resume_root / pointer.read_text().strip()
        if not d.is_dir() or not all((d / f).exists() for f in required):
            return None
        return d
