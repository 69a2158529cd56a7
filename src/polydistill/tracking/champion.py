"""MLflow tracking: which registered student is the champion, on one yardstick.

The champion is the registered student with the best **mean human-normalised score** (:mod:`polydistill.hns`)
over the same games, scored with the same evaluation protocol and seed. A candidate replaces it only when
its mean HNS is strictly higher; "% of its own teacher" never decides (a student of a weaker teacher can
reach a higher % while playing worse). Scores from different protocols are never compared: the champion
stays and the decision says why. When both were scored under a protocol whose HNS does not compare with the
published scores (cut episodes, :func:`polydistill.hns.not_comparable`), the decision still ranks them and
says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..hns import not_comparable
from .names import VTAG_EVALUATION, VTAG_GAMES, VTAG_MEAN_HNS, VTAG_TEACHERS


@dataclass(frozen=True)
class Decision:
    """Whether a candidate becomes champion, and the one-line reason (logged and tagged on the version)."""

    promote: bool
    reason: str


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def decide(candidate: Mapping[str, str], champion: Mapping[str, str] | None) -> Decision:
    """Compare a candidate's version tags with the champion's (None: there is none).

    Rules, in order: no champion -> promote; other games -> keep; the candidate has no mean HNS -> keep; the
    champion has none (registered before HNS) -> promote; other evaluation protocol or seed -> keep; else
    promote only on a strictly higher mean HNS.
    """
    cand_hns = _float(candidate.get(VTAG_MEAN_HNS))
    if champion is None:
        return Decision(True, "no champion yet")
    if champion.get(VTAG_GAMES) != candidate.get(VTAG_GAMES):
        return Decision(False, f"the champion plays other games ({champion.get(VTAG_GAMES)}); not compared")
    if cand_hns is None:
        return Decision(False, "the candidate has no mean HNS (no game with a reference score)")
    champ_hns = _float(champion.get(VTAG_MEAN_HNS))
    if champ_hns is None:
        return Decision(True, "the champion has no mean HNS (registered before HNS scoring)")
    if _evaluation(champion) != _evaluation(candidate):
        return Decision(False, "the champion was scored with another evaluation protocol or seed "
                               f"({champion.get(VTAG_EVALUATION)} vs {candidate.get(VTAG_EVALUATION)}); "
                               "not compared, the champion stays")
    caveat = _caveat(candidate)
    if cand_hns > champ_hns:
        return Decision(True, f"mean HNS {cand_hns:.4f} > champion's {champ_hns:.4f}{caveat}")
    return Decision(False, f"mean HNS {cand_hns:.4f} <= champion's {champ_hns:.4f}{caveat}")


def _caveat(tags: Mapping[str, str]) -> str:
    """A clause for a decision that compared HNS not comparable with the published scores ("" otherwise)."""
    evaluation = _evaluation(tags)
    why = not_comparable(evaluation if isinstance(evaluation, Mapping) else None)
    return f" (HNS not comparable with published scores: {why}; both scored the same way)" if why else ""


def _evaluation(tags: Mapping[str, str]) -> Any:
    text = tags.get(VTAG_EVALUATION)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def evaluation_tag(evaluation: Mapping[str, Any] | None) -> str:
    """The evaluation config as the canonical JSON stored in :data:`VTAG_EVALUATION`."""
    return json.dumps(dict(evaluation or {}), sort_keys=True, separators=(",", ":"))


def teachers_of(tags: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``{GAME: {"uri", "sha256"}}`` of a version's :data:`VTAG_TEACHERS` tag ({} when absent or malformed)."""
    try:
        data = json.loads(tags.get(VTAG_TEACHERS) or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(g): {"uri": str(v["uri"]), "sha256": str(v.get("sha256", ""))}
            for g, v in data.items() if isinstance(v, dict) and v.get("uri")}
