"""Frame-once replay memory: bytes per transition, stacks across episode boundaries, valid sampling."""

from __future__ import annotations

import numpy as np

from polydistill.replay import FrameReplay


def _frames(n: int) -> np.ndarray:
    return (np.arange(1, n + 1, dtype=np.uint8)[:, None, None] * np.ones((1, 84, 84), np.uint8)).astype(np.uint8)


def _fill(replay: FrameReplay, firsts: list[bool], terms: list[bool], truncs: list[bool] | None = None) -> None:
    truncs = truncs or [False] * len(firsts)
    for t, f in enumerate(_frames(len(firsts))):
        replay.add(
            0,
            f,
            actions=t % 3,
            rewards=float(t),
            terminated=terms[t],
            truncated=truncs[t],
            life_lost=False,
            first=firsts[t],
        )


def test_bytes_per_transition_is_frames_once() -> None:
    r = FrameReplay(10_000, num_envs=4)
    assert r.bytes_per_transition <= 7_100  # 84*84 frame + 9 bytes of columns
    assert r.bytes_per_transition * 1_000_000 < 7.2e9


def test_stacks_rebuilt_across_episode_boundaries() -> None:
    r = FrameReplay(64, num_envs=1)
    # Episode A: rows 0-4 (ends with termination), episode B starts at row 5.
    _fill(r, [1, 0, 0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0, 0, 0])
    s = r._stack(np.zeros(4, np.int64), np.array([1, 4, 5, 7]))[:, :, 0, 0]
    assert s.tolist() == [[0, 0, 1, 2], [2, 3, 4, 5], [0, 0, 0, 6], [0, 6, 7, 8]]


def test_sampled_transitions_are_consistent() -> None:
    r = FrameReplay(64, num_envs=1)
    firsts = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    terms = [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    truncs = [0] * 9 + [1, 0, 0]
    _fill(r, firsts, terms, truncs)
    b = r.sample(256, np.random.default_rng(0))
    newest = b["states"][:, -1, 0, 0].astype(int) - 1  # row index of each sampled transition
    assert 9 not in newest  # truncated: no stored successor
    assert 11 not in newest  # newest row: no successor yet
    for row, nxt, done, rew in zip(newest, b["next_states"][:, -1, 0, 0], b["dones"], b["rewards"], strict=True):
        assert rew == row and done == (row == 4)
        if row != 4:
            assert nxt == row + 2  # successor is the next frame of the same episode


def test_wraparound_drops_rows_without_history() -> None:
    r = FrameReplay(12, num_envs=1)  # per_env 12
    _fill(r, [1] + [0] * 19, [0] * 20)  # 20 rows into 12 slots: rows 8..19 kept, no episode start held
    b = r.sample(200, np.random.default_rng(1))
    oldest_sampled = int(b["states"][:, -1, 0, 0].min()) - 1
    assert oldest_sampled >= 8 + 3  # rows 8, 9, 10 lack three frames of history


def test_recent_marks_context_rows_and_keeps_order() -> None:
    r = FrameReplay(64, num_envs=2)
    for t in range(10):
        for e in range(2):
            r.add(
                e,
                np.full((84, 84), 10 * e + t, np.uint8),
                actions=t,
                rewards=0.0,
                terminated=False,
                truncated=False,
                life_lost=False,
                first=(t == 0),
            )
    rows = r.recent(8)  # 4 per stream: rows 6..9 of each, mid-episode
    assert rows["frames"][:, 0, 0].tolist() == [6, 7, 8, 9, 16, 17, 18, 19]
    assert rows["valid"].tolist() == [False, False, False, True] * 2


def test_n_step_returns_stop_at_done_truncation_and_newest_row() -> None:
    r = FrameReplay(64, num_envs=1)
    firsts = [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    terms = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    lost = [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    truncs = [0] * 10 + [1, 0, 0, 0]
    rewards = [1.0, -2.0, 3.0, 0.5, -4.0, 5.0, 0.0, 2.0, 0.0, -1.0, 7.0, 1.0, 3.0, 2.0]
    for t, f in enumerate(_frames(len(firsts))):
        r.add(
            0,
            f,
            actions=t % 3,
            rewards=rewards[t],
            terminated=bool(terms[t]),
            truncated=bool(truncs[t]),
            life_lost=bool(lost[t]),
            first=bool(firsts[t]),
        )
    gamma, n = 0.9, 3
    b = r.sample(512, np.random.default_rng(0), episodic_life=True, n_step=n, gamma=gamma, clip_rewards=True)
    rows = b["states"][:, -1, 0, 0].astype(int) - 1
    seen = set()
    for i, row in enumerate(rows):
        # Brute force: sum clipped rewards until done; a truncated or newest row (no stored successor) is
        # not summed, its state is bootstrapped from instead.
        ret, m, done = 0.0, 0, False
        for k in range(n):
            j = row + k
            if k > 0 and (truncs[j] or j == len(firsts) - 1) and not (terms[j] or lost[j]):
                break
            ret += gamma**k * np.sign(rewards[j])
            m += 1
            if terms[j] or lost[j]:
                done = True
                break
        assert np.isclose(b["rewards"][i], ret), (row, b["rewards"][i], ret)
        assert b["dones"][i] == done and np.isclose(b["discounts"][i], gamma**m), row
        if not done:
            assert b["next_states"][i, -1, 0, 0] == row + m + 1  # frame values are row + 1
        seen.add(int(row))
    assert {0, 1, 2, 8, 9, 11, 12} <= seen and 10 not in seen and 13 not in seen
    # The one-step default is unchanged: raw reward, discount gamma.
    one = r.sample(64, np.random.default_rng(1), gamma=gamma)
    rows1 = one["states"][:, -1, 0, 0].astype(int) - 1
    assert np.allclose(one["rewards"], np.array(rewards)[rows1]) and np.allclose(one["discounts"], gamma)
