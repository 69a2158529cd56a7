"""The distillation's error type."""

from __future__ import annotations

from polydistill.errors import PolydistillError


class DistillError(PolydistillError, ValueError):
    """Bad input to a distillation run (found before any training starts)."""
