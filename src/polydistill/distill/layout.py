"""The student: how its heads map to games and actions (``shared`` / ``per-game`` / ``union``), the
``init`` setting, and building the network (optionally as a copy of one teacher)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..config import DistillConfig
from ..envs import FULL_ACTION_MEANINGS, UnknownGameError, canonical_game
from ..networks import DuelingQNetwork, QNetwork
from .errors import DistillError

log = logging.getLogger(__package__)  # one logger for the package, named as before the split


@dataclass
class StudentLayout:
    """How the student's heads map to games and actions.

    ``head_sizes`` are the heads' output counts; ``head_for_game`` picks a game's head; ``union_action_map``
    (``union`` only) lists, for each of a game's actions in its own order, its index among the 18 ALE actions.
    """

    games: list[str]
    actions: str
    head_sizes: list[int]
    head_for_game: dict[str, int]
    action_meanings: dict[str, list[str]]
    union_action_map: dict[str, list[int]] = field(default_factory=dict)

    def num_actions(self, game: str) -> int:
        return len(self.action_meanings[game])

    def mask(self, game: str, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """Legal-action mask (18,) of ``game`` for ``union``, else None."""
        if self.actions != "union":
            return None
        m = torch.zeros(len(FULL_ACTION_MEANINGS), dtype=torch.bool, device=device)
        m[self.union_action_map[game]] = True
        return m

    def columns(self, game: str, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """The game's columns of the union head, in its own action order (``union`` only)."""
        if self.actions != "union":
            return None
        return torch.as_tensor(self.union_action_map[game], dtype=torch.long, device=device)


def plan_layout(actions: str, meanings: Mapping[str, list[str]]) -> StudentLayout:
    """The head layout for ``actions`` over games with these action meanings (games sorted by name).

    ``shared`` refuses games with different action counts (the seed pairs games that way).
    """
    games = sorted(meanings)
    if not games:
        raise DistillError("no games to distill: give at least one teacher and dataset")
    counts = {g: len(meanings[g]) for g in games}
    if actions == "shared":
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{g} ({n} actions)" for g, n in counts.items())
            raise DistillError(
                f"actions=shared needs games with the same number of actions, got {listed}; pair games with "
                f"equal action counts, or use --actions per-game or --actions union"
            )
        return StudentLayout(
            games, actions, [counts[games[0]]], dict.fromkeys(games, 0), {g: list(meanings[g]) for g in games}
        )
    if actions == "per-game":
        return StudentLayout(
            games,
            actions,
            [counts[g] for g in games],
            {g: i for i, g in enumerate(games)},
            {g: list(meanings[g]) for g in games},
        )
    if actions == "union":
        amap: dict[str, list[int]] = {}
        for g in games:
            unknown = [m for m in meanings[g] if m not in FULL_ACTION_MEANINGS]
            if unknown:
                raise DistillError(f"{g}: actions {unknown} are not ALE actions; cannot place them in the union head")
            amap[g] = [FULL_ACTION_MEANINGS.index(m) for m in meanings[g]]
        return StudentLayout(
            games,
            actions,
            [len(FULL_ACTION_MEANINGS)],
            dict.fromkeys(games, 0),
            {g: list(meanings[g]) for g in games},
            amap,
        )
    raise DistillError(f"unknown actions={actions!r}; choose shared, per-game or union")


def parse_init(init: str, games: list[str]) -> str | None:
    """The teacher game of ``init=teacher:GAME`` (canonical), None for ``random``, and for plain ``teacher``
    the first of ``games`` (the student's games are in name order, so a profile can say "copy a teacher"
    without naming a game the user may replace)."""
    if init == "random":
        return None
    if init == "teacher":
        if not games:
            raise DistillError("init='teacher' needs at least one game")
        return games[0]
    kind, _, game = init.partition(":")
    if kind != "teacher" or not game:
        raise DistillError(f"init={init!r} is not understood; use 'random', 'teacher' or 'teacher:GAME'")
    try:
        g = canonical_game(game)
    except UnknownGameError as e:
        raise DistillError(f"init={init!r}: {e}") from None
    if g not in games:
        raise DistillError(f"init={init!r}: {g} is not one of the distilled games ({', '.join(games)})")
    return g


def _check_init(
    init_game: str | None, layout: StudentLayout, cfg: DistillConfig, teacher_widths: dict[str, float]
) -> None:
    if init_game is None:
        return
    if cfg.width != teacher_widths[init_game]:
        raise DistillError(
            f"init=teacher:{init_game} copies the teacher's weights, so the student needs the teacher's "
            f"width "
            f"({teacher_widths[init_game]}), got width={cfg.width}; use --init random for a resized student"
        )
    head = layout.head_sizes[layout.head_for_game[init_game]]
    n = layout.num_actions(init_game)
    if head != n:
        raise DistillError(
            f"init=teacher:{init_game}: the student's head for {init_game} has {head} outputs "
            f"(actions={layout.actions}) but the teacher has {n}; use --init random or "
            f"--actions per-game/shared"
        )


def build_student(
    layout: StudentLayout,
    cfg: DistillConfig,
    teachers: Mapping[str, QNetwork] | None = None,
    frame_stack: int = 4,
) -> DuelingQNetwork:
    """A student network for ``layout``, seeded by ``cfg.seed``.

    ``cfg.init=teacher:GAME`` copies that teacher's torso and head into the student (every head of the
    teacher's shape), so the student starts as the teacher.
    """
    init_game = parse_init(cfg.init, layout.games)
    torch.manual_seed(cfg.seed)
    student = DuelingQNetwork(layout.head_sizes, width=cfg.width, frame_stack=frame_stack)
    if init_game is not None:
        if not teachers or init_game not in teachers:
            raise DistillError(f"init=teacher:{init_game} needs that teacher's network")
        teacher = teachers[init_game]
        _check_init(init_game, layout, cfg, {init_game: teacher.width})
        student.torso.load_state_dict(teacher.torso.state_dict())
        copied = []
        for h, size in enumerate(layout.head_sizes):
            # An imported (Nature-DQN) teacher's head has another layout: only its torso is copied.
            if size == teacher.num_actions[0] and isinstance(teacher, DuelingQNetwork):
                student.heads[h].load_state_dict(teacher.heads[0].state_dict())
                copied.append(h)
        log.info("student initialised from the %s teacher (torso and heads %s)", init_game, copied)
    return student
