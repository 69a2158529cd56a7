"""Agents that play a game: a teacher, a distilled student, or uniform random play.

One interface for evaluation and reports (see docs/CONTRACTS.md):

- :func:`load_agent` ``(path | "random", device) -> Agent``; ``path`` is a checkpoint directory (with
  ``model.pt`` and ``metadata.json``) or a run directory holding ``checkpoint/``.
- ``Agent.games`` (games it plays; empty for random, which plays any game), ``Agent.kind`` ("teacher",
  "student", "random"), ``Agent.label`` ("teacher", "student_subset", "student_latent", "student_full",
  "random"), ``Agent.num_actions(game)``, ``Agent.action_meanings(game)``; a student's ``input_kind`` (``frames``, or
  ``autoencoder`` for a latent student, which sees each game's states through the autoencoder it carries:
  :mod:`polydistill.latent_input`).
- ``Agent.q_values(states, game) -> (B, num_actions(game))`` float32 on the agent's device, in the game's
  own (minimal) action order: a teacher's single head; a student's head for the game (``per-game``), its
  one head (``shared``), or the game's columns of its 18-action head (``union``).
- ``Agent.act(states, game, epsilon, rng) -> np.ndarray`` int64 (B,): greedy on ``q_values``, a uniform
  random legal action with probability ``epsilon``.

States are uint8 stacks (B, frame_stack, 84, 84), as a torch tensor or numpy array, on any device. Weights
are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from polydistill.errors import PolydistillError

from .checkpoint import CheckpointError, load_checkpoint, read_metadata
from .envs import action_meanings, canonical_game
from .latent_input import load_input_autoencoders
from .networks import QNetwork, pick_device

KINDS = ("teacher", "student", "random")
#: The report's columns (docs/CONTRACTS.md): an evaluation's label is one of these, of the agent's kind.
LABELS = ("random", "teacher", "student_subset", "student_latent", "student_full")


def label_kind(label: str) -> str:
    """The agent kind a label belongs to: ``student_subset`` -> ``student``."""
    return label.split("_", 1)[0]


class AgentError(PolydistillError, ValueError):
    """An agent was asked for a game it does not play, or its checkpoint is not an agent."""


def check_teacher_metadata(meta: dict[str, Any], where: str | Path) -> tuple[str, list[str]]:
    """A teacher checkpoint's game (canonical) and action meanings, after checking its metadata against the
    game itself: a renamed or mangled field, or a network whose action count is another game's (a Pong
    network labelled Breakout would be scored on Breakout with Pong's actions), is a :class:`CheckpointError`
    naming ``where`` (the checkpoint directory)."""
    file = Path(where) / "metadata.json"
    game = meta.get("game")
    if not isinstance(game, str) or not game:
        raise CheckpointError(f"{file} has no 'game' (a teacher names the game it plays); re-create the checkpoint")
    g = canonical_game(game)
    meanings = meta.get("action_meanings")
    if not (isinstance(meanings, list) and meanings and isinstance(meanings[0], list)
            and all(isinstance(m, str) for m in meanings[0])):
        raise CheckpointError(f"{file} has no 'action_meanings' list of {g}'s actions; re-create the checkpoint")
    truth = list(_minimal_meanings(g))
    arch = meta.get("architecture")
    heads = arch.get("num_actions") if isinstance(arch, dict) else None
    n_net = heads[0] if isinstance(heads, list) and len(heads) == 1 else heads
    if n_net != len(truth) or list(meanings[0]) != truth:
        raise CheckpointError(
            f"{file} says {g} ({len(truth)} actions), but the checkpoint's network has {n_net} and its action "
            f"meanings are {len(meanings[0])}: it is another game's teacher or corrupt; re-create it")
    return g, truth


def _as_tensor(states: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(states, np.ndarray):
        states = torch.from_numpy(np.ascontiguousarray(states))
    if states.dim() != 4:
        raise AgentError(f"states must be (batch, frame_stack, 84, 84), got shape {tuple(states.shape)}")
    return states.to(device, non_blocking=True)


class Agent:
    """Base class: subclasses implement :meth:`num_actions` and :meth:`q_values`."""

    kind: str = ""
    label: str = ""

    def __init__(
        self,
        games: list[str],
        device: torch.device,
        path: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.games = list(games)
        self.device = device
        self.path = path
        self.metadata = dict(metadata or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(label={self.label!r}, games={self.games}, path={self.path!r})"

    def _game(self, game: str) -> str:
        """Canonical name of ``game``; refuses games this agent was not trained on."""
        g = canonical_game(game)
        if self.games and g not in self.games:
            what = f"{self.kind} {self.path}" if self.path else self.kind
            raise AgentError(f"{what} plays {', '.join(self.games)} only; it was not trained on {g}")
        return g

    def num_actions(self, game: str) -> int:
        """Number of actions of ``game`` in its minimal action set."""
        return len(self.action_meanings(game))

    def action_meanings(self, game: str) -> list[str]:
        """Names of ``game``'s actions in the order of :meth:`q_values` columns."""
        raise NotImplementedError

    def q_values(self, states: np.ndarray | torch.Tensor, game: str) -> torch.Tensor:
        """Action values (B, num_actions(game)) float32 for uint8 states (B, frame_stack, 84, 84)."""
        raise NotImplementedError

    def act(
        self,
        states: np.ndarray | torch.Tensor,
        game: str,
        epsilon: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Epsilon-greedy actions (B,) int64: greedy on :meth:`q_values`, uniform with probability epsilon."""
        if not 0.0 <= epsilon <= 1.0:
            raise AgentError(f"epsilon must be in [0, 1], got {epsilon}")
        rng = rng if rng is not None else np.random.default_rng()
        n = self.num_actions(game)
        greedy = self.q_values(states, game).argmax(dim=1).cpu().numpy().astype(np.int64)
        explore = rng.random(len(greedy)) < epsilon
        return np.where(explore, rng.integers(0, n, size=len(greedy)), greedy).astype(np.int64)


class RandomAgent(Agent):
    """Uniform random play in any game; its Q-values are all zero (no preference)."""

    kind = "random"
    label = "random"

    def __init__(self, device: torch.device) -> None:
        super().__init__([], device, None, {"kind": "random"})

    def action_meanings(self, game: str) -> list[str]:
        return list(_minimal_meanings(canonical_game(game)))

    def q_values(self, states: np.ndarray | torch.Tensor, game: str) -> torch.Tensor:
        return torch.zeros(len(states), self.num_actions(game), device=self.device)

    def act(
        self,
        states: np.ndarray | torch.Tensor,
        game: str,
        epsilon: float = 1.0,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Uniform random actions whatever ``epsilon`` is."""
        rng = rng if rng is not None else np.random.default_rng()
        return rng.integers(0, self.num_actions(game), size=len(states)).astype(np.int64)


@functools.cache
def _minimal_meanings(game: str) -> tuple[str, ...]:
    return tuple(action_meanings(game))


class TeacherAgent(Agent):
    """A single-game teacher checkpoint."""

    kind = "teacher"
    label = "teacher"

    def __init__(self, model: QNetwork, meta: dict[str, Any], device: torch.device, path: str) -> None:
        game, meanings = check_teacher_metadata(meta, path)
        super().__init__([game], device, path, meta)
        self.model = model
        self._meanings = meanings

    def action_meanings(self, game: str) -> list[str]:
        self._game(game)
        return list(self._meanings)

    def q_values(self, states: np.ndarray | torch.Tensor, game: str) -> torch.Tensor:
        self._game(game)
        with torch.inference_mode():
            return self.model(_as_tensor(states, self.device)).float()


class StudentAgent(Agent):
    """A multi-task student: routes each game to its head (``per-game``), the shared head (``shared``), or the
    game's columns of the 18-action head (``union``)."""

    kind = "student"

    def __init__(
        self, model: QNetwork, meta: dict[str, Any], device: torch.device, path: str, raw_frames: bool = False
    ) -> None:
        games = [canonical_game(g) for g in meta["games"]]
        super().__init__(games, device, path, meta)
        self.model = model
        #: A latent student's per-game input autoencoders (polydistill.latent_input); empty on frames.
        self.inputs = {} if raw_frames else {
            canonical_game(g): m for g, m in load_input_autoencoders(path, meta, device).items()}
        #: What the network sees: ``frames``, or ``autoencoder`` (each game's states through its autoencoder).
        self.input_kind = "autoencoder" if self.inputs else "frames"
        self.actions: str = meta["actions"]
        self.label = f"student_{meta.get('source', 'full')}"
        self._head = {canonical_game(g): int(h) for g, h in meta["head_for_game"].items()}
        self._meanings = {canonical_game(g): list(m) for g, m in meta["action_meanings"].items()}
        self._columns: dict[str, torch.Tensor] = {}
        if self.actions == "union":
            self._columns = {
                canonical_game(g): torch.as_tensor(cols, dtype=torch.long, device=device)
                for g, cols in meta["union_action_map"].items()
            }
        missing = [g for g in games if g not in self._head or g not in self._meanings]
        if missing or (self.actions == "union" and any(g not in self._columns for g in games)):
            raise CheckpointError(f"{path}: student metadata lacks the head/action map of {missing or games}")

    def action_meanings(self, game: str) -> list[str]:
        return list(self._meanings[self._game(game)])

    def q_values(self, states: np.ndarray | torch.Tensor, game: str) -> torch.Tensor:
        g = self._game(game)
        with torch.inference_mode():
            x = _as_tensor(states, self.device)
            if g in self.inputs:
                x = self.inputs[g](x)
            q = self.model(x, head=self._head[g]).float()
        return q.index_select(1, self._columns[g]) if self.actions == "union" else q

    def export_module(self) -> tuple[nn.Module, dict[str, list[int]]]:
        """One traceable module that plays like :meth:`q_values` on every game at once, for a model registry:
        uint8 states (B, frame_stack, 84, 84) -> each game's Q-values concatenated along dim 1 in ``games``
        order, each game's block computed on that game's own input (its autoencoder's reconstruction for a
        latent student). Returns the module and ``{game: [start, end)}``, the columns of each block."""
        games = list(self.games)
        bounds = np.cumsum([0, *[self.num_actions(g) for g in games]]).tolist()
        module = _GamesQ(self.model, [self.inputs.get(g) for g in games], [self._head[g] for g in games],
                         [self._columns.get(g) for g in games]).eval()
        return module, {g: [int(bounds[i]), int(bounds[i + 1])] for i, g in enumerate(games)}


class _GamesQ(nn.Module):
    """See :meth:`StudentAgent.export_module`."""

    def __init__(self, student: nn.Module, inputs: list[nn.Module | None], heads: list[int],
                 columns: list[torch.Tensor | None]) -> None:
        super().__init__()
        self.student = student
        self.inputs = nn.ModuleList([m if m is not None else nn.Identity() for m in inputs])
        self.head_index = heads  # not `heads`: MLflow logging reads that name as a ModuleList of heads
        self.columns = [c.cpu() if c is not None else None for c in columns]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for through, head, cols in zip(self.inputs, self.head_index, self.columns, strict=True):
            q = self.student(through(x), head=head)
            out.append(q.index_select(1, cols.to(q.device)) if cols is not None else q)
        return torch.cat(out, dim=1)


def _checkpoint_dir(path: str | Path) -> Path:
    d = Path(path)
    if (d / "checkpoint").is_dir() and not (d / "metadata.json").is_file():
        d = d / "checkpoint"
    return d


def load_agent(path: str | Path, device: str | torch.device = "cpu", raw_frames: bool = False) -> Agent:
    """Load a teacher or student checkpoint (or a run directory holding ``checkpoint/``), or ``"random"``.

    Args:
        path: checkpoint directory, run directory, or the string ``"random"``.
        device: torch device for the network (``auto`` picks CUDA when available).
        raw_frames: play a latent student on the frames themselves instead of through the autoencoders it
            carries (a diagnostic: ``benchmarks/latent_student_play.py``); no effect on other agents.
    """
    dev = pick_device(device) if isinstance(device, str) else device
    if str(path) == "random":
        return RandomAgent(dev)
    d = _checkpoint_dir(path)
    kind = read_metadata(d).get("kind")
    if kind not in ("teacher", "student"):
        raise AgentError(f"{d} holds a {kind!r} checkpoint; agents are teacher or student checkpoints")
    model, meta = load_checkpoint(d, dev)
    if not isinstance(model, QNetwork):
        raise AgentError(f"{d}: a {kind} checkpoint must hold a Q-network")
    model.requires_grad_(False)
    try:
        return (
            TeacherAgent(model, meta, dev, str(d))
            if kind == "teacher"
            else StudentAgent(model, meta, dev, str(d), raw_frames=raw_frames)
        )
    except (KeyError, TypeError, AttributeError, IndexError) as e:  # a renamed or mangled metadata field
        raise CheckpointError(f"{d / 'metadata.json'}: a {kind} checkpoint's field is missing or mangled "
                              f"({type(e).__name__}: {e}); re-create the checkpoint") from None
