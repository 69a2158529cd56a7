"""Human-normalised scores (HNS): one yardstick for every agent on every Atari game.

``HNS = (score - random) / (human - random)``: 0 is uniformly random play, 1 a professional human game
tester. Unlike "% of the run's own teacher" it does not move when the teacher does, so students of
different runs (different teachers) compare on it.

Reference scores: the standard Atari-57 random and human scores of Mnih et al. 2015 ("Human-level control
through deep reinforcement learning", Nature 518, Extended Data Table 2) extended to all 57 games by Badia et
al. 2020 ("Agent57: Outperforming the Atari Human Benchmark", Appendix H, the table of human and random
scores); the values are as transcribed in DeepMind's DQN Zoo (``dqn_zoo/atari_data.py``). The references are
scores of whole episodes of at least 5 minutes of play (18,000 frames: Mnih et al. 2015's human testers and
evaluation; Badia et al. 2020 cap at 108,000), with up to 30 no-op starts.

An HNS is therefore only comparable with the published scores when it comes from the same kind of play:
whole episodes under a cap of at least 18,000 frames. A score of episodes cut earlier (the seed's ``cycles``
protocol cuts the episode running at each cycle's end; the smoke profile's 200-step cycles cut nearly every
one) still ranks agents scored the same way against each other, but not against humans:
:func:`not_comparable` says why, and the report and the champion decision say so.

A game without a reference here gets no HNS (``None``, reported as missing), never an invented one.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping
from typing import Any

#: ``GAME: (random score, human score)`` in raw game points, by polydistill's CamelCase game name.
REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "Asteroids": (719.1, 47388.7),
    "Atlantis": (12850.0, 29028.1),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "BeamRider": (363.9, 16926.5),
    "Berzerk": (123.7, 2630.4),
    "Bowling": (23.1, 160.7),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "Centipede": (2090.9, 12017.0),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "Defender": (2874.5, 18688.9),
    "DemonAttack": (152.1, 1971.0),
    "DoubleDunk": (-18.6, -16.4),
    "Enduro": (0.0, 860.5),
    "FishingDerby": (-91.7, -38.7),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Gravitar": (173.0, 3351.4),
    "Hero": (1027.0, 30826.4),
    "IceHockey": (-11.2, 0.9),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MontezumaRevenge": (0.0, 4753.3),
    "MsPacman": (307.3, 6951.6),
    "NameThisGame": (2292.3, 8049.0),
    "Phoenix": (761.4, 7242.6),
    "Pitfall": (-229.4, 6463.7),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "Riverraid": (1338.5, 17118.0),
    "RoadRunner": (11.5, 7845.0),
    "Robotank": (2.2, 11.9),
    "Seaquest": (68.4, 42054.7),
    "Skiing": (-17098.1, -4336.9),
    "Solaris": (1236.3, 12326.7),
    "SpaceInvaders": (148.0, 1668.7),
    "StarGunner": (664.0, 10250.0),
    "Surround": (-10.0, 6.5),
    "Tennis": (-23.8, -8.3),
    "TimePilot": (3568.0, 5229.2),
    "Tutankham": (11.4, 167.6),
    "UpNDown": (533.4, 11693.2),
    "Venture": (0.0, 1187.5),
    "VideoPinball": (16256.9, 17667.9),
    "WizardOfWor": (563.5, 4756.5),
    "YarsRevenge": (3092.9, 54576.9),
    "Zaxxon": (32.5, 9173.3),
}

#: The shortest episode cap of the published reference scores, in emulator frames (5 minutes at 60 Hz).
STANDARD_MIN_EPISODE_FRAMES = 18_000

_KEYS = {re.sub(r"[^a-z0-9]", "", g.lower()): g for g in REFERENCE_SCORES}


def reference(game: str) -> tuple[float, float] | None:
    """``(random, human)`` of ``game`` (any spelling: ``UpNDown``, ``up_n_down``, ``ALE/UpNDown-v5``), or None."""
    name = game.split("/")[-1].split("-v")[0]
    key = _KEYS.get(re.sub(r"[^a-z0-9]", "", name.lower()))
    return REFERENCE_SCORES[key] if key else None


def hns(game: str, score: float) -> float | None:
    """Human-normalised score of a raw mean ``score`` on ``game`` (1.0 = human); None when the game has no
    reference score or the score is not finite."""
    ref = reference(game)
    if ref is None or not math.isfinite(score):
        return None
    rand, human = ref
    return (score - rand) / (human - rand)


def mean_median(values: Mapping[str, float | None]) -> tuple[float | None, float | None]:
    """Mean and median over the games whose HNS is defined (``None, None`` when none is)."""
    vals = [float(v) for v in values.values() if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), statistics.median(vals)


def not_comparable(evaluation: Mapping[str, Any] | None) -> str | None:
    """Why HNS of scores taken under ``evaluation`` (an evaluation config: ``protocol``,
    ``max_episode_frames``) do not compare with the published human and random scores; None when they do.

    Comparable means whole episodes (the ``episodes`` protocol) capped at no fewer than
    :data:`STANDARD_MIN_EPISODE_FRAMES` frames.
    """
    if not evaluation:
        return "the evaluation protocol is not recorded"
    protocol = evaluation.get("protocol")
    if protocol != "episodes":
        return (f"the {protocol} protocol scores episodes cut at each cycle's end, not whole episodes"
                if protocol == "cycles" else f"unknown evaluation protocol {protocol!r}")
    cap = evaluation.get("max_episode_frames")
    if not isinstance(cap, int | float) or isinstance(cap, bool):
        return "the episode cap is not recorded"
    if cap < STANDARD_MIN_EPISODE_FRAMES:
        return (f"episodes are cut at {int(cap):,} frames, below the {STANDARD_MIN_EPISODE_FRAMES:,} "
                "(5 minutes) of the published scores")
    return None
