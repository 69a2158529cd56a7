"""Neural networks: the Dueling Q-network (teachers and students), the plain Nature-DQN Q-network (imported
teachers) and the state autoencoder.

Inputs are uint8 state stacks of shape (B, frame_stack, 84, 84); networks scale them to [0, 1] themselves so
callers never hold float copies of a batch of frames.

References: Mnih et al. 2015 (Nature-DQN torso), Wang et al. 2016 (dueling aggregation
``Q = V + A - mean(A)``), Rusu et al. 2015 (one head per game for multi-task students).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from polydistill.errors import PolydistillError

FRAME_SIZE = 84


def _scaled(n: int, width: float) -> int:
    return max(1, round(n * width))


def make_adam(params: Any, device: torch.device, **kwargs: Any) -> torch.optim.Adam:
    """Adam, fused into one kernel where torch supports it (CPU and CUDA).

    The fused step is several times faster on CPU than the default for-loop implementation for the
    3.3M-parameter dueling network (``benchmarks/teacher_throughput.py``); the update rule is the same.
    """
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(params, fused=fused, **kwargs)


def scheduled_lr(base: float, schedule: str, step: int, total: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``total``: ``base`` throughout (``constant``), or
    cosine-annealed from ``base`` to 0 at ``total`` (``cosine``; Loshchilov & Hutter 2017, no restarts).

    A pure function of the step, so a resumed run sets the same rates as an unbroken one.
    """
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; use 'constant' or 'cosine'")


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in opt.param_groups:
        group["lr"] = lr


class NatureTorso(nn.Module):
    """Nature-DQN convolutions: 8x8/4, 4x4/2, 3x3/1, scaled in channels by ``width``."""

    def __init__(self, frame_stack: int = 4, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3 = _scaled(32, width), _scaled(64, width), _scaled(64, width)
        self.net = nn.Sequential(
            nn.Conv2d(frame_stack, c1, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(c2, c3, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.out_dim = c3 * 7 * 7

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return self.net(x)


class DuelingHead(nn.Module):
    """Value and advantage streams combined as ``V + A - mean(A)`` (Wang et al. 2016, eq. 9)."""

    def __init__(self, in_dim: int, num_actions: int, hidden: int = 512) -> None:
        super().__init__()
        self.value = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.advantage = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_actions))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        v = self.value(features)
        a = self.advantage(features)
        return v + a - a.mean(dim=1, keepdim=True)


class NatureHead(nn.Module):
    """Nature-DQN's fully connected layers: a hidden ReLU layer, then one value per action (Mnih et al. 2015).

    The layout of Stable-Baselines3's and CleanRL's DQN Q-networks, so their weights map one to one.
    """

    def __init__(self, in_dim: int, num_actions: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_actions))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class QNetwork(nn.Module):
    """A Q-network with one or more heads over a shared Nature-DQN torso; subclasses choose the head.

    A teacher has one head. A multi-task student has one head per game (``per-game``), or a single head
    shared by all games (``shared``, equal action counts; ``union``, the 18 ALE actions).

    Args:
        num_actions: actions per head (an int for a single head).
        width: channel/hidden multiplier against the teacher (1.0 = Nature-DQN size).
        frame_stack: frames per state.
    """

    #: The ``architecture()["type"]`` of the subclass, read by :func:`build_network`.
    kind: str = ""

    def __init__(self, num_actions: int | Sequence[int], width: float = 1.0, frame_stack: int = 4) -> None:
        super().__init__()
        heads = [num_actions] if isinstance(num_actions, int) else list(num_actions)
        if not heads or any(a < 1 for a in heads):
            raise ValueError(f"num_actions must be positive, got {num_actions!r}")
        self.num_actions = heads
        self.width = float(width)
        self.frame_stack = frame_stack
        self.torso = NatureTorso(frame_stack, width)
        hidden = _scaled(512, width)
        self.heads = nn.ModuleList(self._head(self.torso.out_dim, a, hidden) for a in heads)

    def _head(self, in_dim: int, num_actions: int, hidden: int) -> nn.Module:
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:
        """Size of the torso's output (the hidden layer Actor-Mimic regresses)."""
        return self.torso.out_dim

    def forward(self, x: torch.Tensor, head: int = 0) -> torch.Tensor:
        """Q-values (B, num_actions[head]) for uint8 or [0,1] float states (B, frame_stack, 84, 84)."""
        return self.heads[head](self.torso(x))

    def forward_with_features(self, x: torch.Tensor, head: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Q-values and the torso features they were computed from."""
        f = self.torso(x)
        return self.heads[head](f), f

    def architecture(self) -> dict[str, Any]:
        """JSON description from which :func:`build_network` rebuilds this network."""
        return {
            "type": self.kind,
            "num_actions": list(self.num_actions),
            "width": self.width,
            "frame_stack": self.frame_stack,
        }


class DuelingQNetwork(QNetwork):
    """The Dueling Q-network (Wang et al. 2016) of polydistill's teachers and of every student."""

    kind = "dueling_dqn"

    def _head(self, in_dim: int, num_actions: int, hidden: int) -> nn.Module:
        return DuelingHead(in_dim, num_actions, hidden)


class NatureQNetwork(QNetwork):
    """The plain Nature-DQN Q-network (Mnih et al. 2015): the network of an imported Stable-Baselines3 or
    CleanRL DQN teacher (:mod:`polydistill.teacher_import`). polydistill never trains one."""

    kind = "nature_dqn"

    def _head(self, in_dim: int, num_actions: int, hidden: int) -> nn.Module:
        return NatureHead(in_dim, num_actions, hidden)


#: Q-network classes by ``architecture()["type"]``.
Q_NETWORKS: dict[str, type[QNetwork]] = {c.kind: c for c in (DuelingQNetwork, NatureQNetwork)}


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder: (B, frame_stack, 84, 84) uint8 -> (B, latent_dim) -> [0,1] reconstruction.

    The encoder is the Nature-DQN torso with a linear bottleneck; the decoder mirrors it with transposed
    convolutions and ends in a sigmoid so outputs are pixel intensities in [0, 1].
    """

    def __init__(self, latent_dim: int = 64, frame_stack: int = 4, width: float = 1.0) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.frame_stack = frame_stack
        self.width = float(width)
        self.encoder_torso = NatureTorso(frame_stack, width)
        c1, c2, c3 = _scaled(32, width), _scaled(64, width), _scaled(64, width)
        self._c3 = c3
        self.to_latent = nn.Linear(self.encoder_torso.out_dim, latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim, self.encoder_torso.out_dim), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(c3, c2, 3, stride=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c2, c1, 4, stride=2),
            nn.ReLU(),
            nn.ConvTranspose2d(c1, frame_stack, 8, stride=4),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes (B, latent_dim) for uint8 states."""
        return self.to_latent(self.encoder_torso(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstructed states in [0, 1], shape (B, frame_stack, 84, 84)."""
        return self.decoder[-1](self.decode_logits(z))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's output before its sigmoid (``decode(z) == sigmoid(decode_logits(z))``): what a
        cross-entropy loss trains on."""
        h = self.from_latent(z.float()).view(-1, self._c3, 7, 7)
        return self.decoder[:-1](h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def architecture(self) -> dict[str, Any]:
        """JSON description from which :func:`build_network` rebuilds this network."""
        return {
            "type": "conv_autoencoder",
            "latent_dim": self.latent_dim,
            "frame_stack": self.frame_stack,
            "width": self.width,
        }


def subpixel_decoder(model: ConvAutoencoder) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """An inference-only copy of ``model.decode`` whose last transposed convolution (kernel = 2 x stride, no
    padding) runs as a 2x2 convolution followed by a pixel shuffle: the same function up to float rounding,
    about twice as fast on CPU because it avoids the col2im path. Returns None when the decoder does not end
    that way. The weights are copied now: rebuild it after training the model further.
    """
    last = model.decoder[-2]
    if not isinstance(last, nn.ConvTranspose2d):
        return None
    s, k = last.stride[0], last.kernel_size[0]
    if k != 2 * s or last.padding != (0, 0):
        return None
    w = last.weight.detach()  # (Cin, Cout, k, k)
    cout = w.shape[1]
    kern = torch.empty(cout * s * s, w.shape[0], 2, 2, device=w.device, dtype=w.dtype)
    channels = torch.arange(cout, device=w.device) * s * s
    # Output pixel (s*i + ry, s*j + rx) sums input (i - 1 + ty, j - 1 + tx) through kernel tap
    # (ry + s*(1 - ty), rx + s*(1 - tx)): one 2x2 conv per sub-pixel phase (ry, rx).
    for ry in range(s):
        for rx in range(s):
            for ty in range(2):
                for tx in range(2):
                    kern[channels + ry * s + rx, :, ty, tx] = w[:, :, ry + s * (1 - ty), rx + s * (1 - tx)].T
    assert last.bias is not None  # the decoder's last layer has a bias
    bias = last.bias.detach().repeat_interleave(s * s)
    head = list(model.decoder)[:-2]

    def decode(z: torch.Tensor) -> torch.Tensor:
        h = model.from_latent(z.float()).view(-1, model._c3, 7, 7)
        for layer in head:
            h = layer(h)
        return torch.sigmoid(nn.functional.pixel_shuffle(nn.functional.conv2d(h, kern, bias, padding=1), s))

    return decode


def build_network(arch: dict[str, Any]) -> nn.Module:
    """Rebuild a network from its :meth:`architecture` description."""
    kind = arch.get("type")
    if kind in Q_NETWORKS:
        return Q_NETWORKS[kind](arch["num_actions"], arch.get("width", 1.0), arch.get("frame_stack", 4))
    if kind == "conv_autoencoder":
        return ConvAutoencoder(arch["latent_dim"], arch.get("frame_stack", 4), arch.get("width", 1.0))
    raise ValueError(f"unknown network type {kind!r} in checkpoint metadata")


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class DeviceError(PolydistillError, ValueError):
    """A ``--device`` that is misspelt or not on this machine; the message says which ones are."""


def pick_device(spec: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device, which must exist here.

    Raises :class:`DeviceError` (one line) for an unknown spelling, ``cuda`` without a usable CUDA device,
    ``cuda:N`` past the device count, or ``mps`` where it is not available; callers check this before any
    work or file is written.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise DeviceError(f"--device {spec!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"--device {spec!r}: this machine has no usable CUDA device; use --device cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"--device {spec!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"--device {spec!r}: MPS is not available here; use --device cpu or auto")
        return dev
    raise DeviceError(f"--device {spec!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
