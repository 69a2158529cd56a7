"""How the learner's arithmetic runs: number format (bf16 autocast or fp32), convolution memory layout, and
``torch.compile``. None of these changes the algorithm; each changes rounding, which is why each is a
setting that is off unless chosen (``precision="auto"`` picks bf16 only where the hardware multiplies it
natively, see :func:`bf16_native`).

Autocast runs matrix multiplies and convolutions in bf16 and keeps weights, gradients, optimizer state and
the loss in fp32 (mixed precision; Micikevicius et al. 2018), so no loss scaling is needed with bf16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Literal, TypeVar

import torch
from torch import nn

from polydistill.errors import PolydistillError

Precision = Literal["auto", "fp32", "bf16"]
M = TypeVar("M", bound=nn.Module)


class PrecisionError(PolydistillError, ValueError):
    """A number format that this device cannot run; the message names the setting and the fix."""


def bf16_native(device: torch.device) -> bool:
    """True where ``device`` multiplies bf16 matrices in hardware: a CUDA device with bf16 support (Ampere
    and later), or a CPU with AVX-512 BF16 or AMX. Elsewhere torch emulates bf16 on CPU, many times slower
    than fp32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        return bool(torch.cpu._is_avx512_bf16_supported() or amx())
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or None for plain fp32.

    ``auto`` is bf16 where :func:`bf16_native` holds and fp32 elsewhere; ``bf16`` is bf16 on CPU or CUDA
    even when emulated (for measuring); ``fp32`` is always None.
    """
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if bf16_native(device) else None
    if precision == "bf16":
        if device.type not in ("cpu", "cuda"):
            raise PrecisionError(f"--precision bf16 is not supported on {device.type}; use --precision fp32 or auto")
        return torch.bfloat16
    raise PrecisionError(f"--precision {precision!r} is not a number format; use auto, fp32 or bf16")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[object]:
    """A context running its forward passes under autocast to ``dtype``; a no-op for None (fp32), so the fp32
    path is exactly the code without it."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_network(net: M, channels_last: bool) -> M:
    """``net``, moved in place to channels-last (NHWC) weight layout when asked; parameters keep their names
    and values, so checkpoints are unaffected."""
    if channels_last:
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return net


def forward_fn(net: nn.Module, compile_it: bool) -> Callable[..., torch.Tensor]:
    """What to call for ``net``'s forward pass: ``net`` itself, or a ``torch.compile`` of it that shares its
    parameters (the state dict stays ``net``'s: a compiled wrapper's keys carry a prefix)."""
    if not compile_it:
        return net
    return torch.compile(net, dynamic=False)


def describe(device: torch.device, dtype: torch.dtype | None, channels_last: bool, compiled: bool) -> str:
    """One line naming the arithmetic a learner runs, for logs and benchmark output."""
    fmt = "bf16 autocast" if dtype is torch.bfloat16 else "fp32"
    if device.type == "cpu":
        cap = torch.backends.cpu.get_cpu_capability()
        native = "native bf16" if bf16_native(device) else "no native bf16"
        where = f"cpu ({cap}, {native})"
    else:
        where = str(device)
    extras = [s for s, on in (("channels-last", channels_last), ("torch.compile", compiled)) if on]
    return ", ".join([where, fmt, *extras])
