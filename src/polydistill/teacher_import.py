"""Stage ``import-teacher``: a DQN teacher trained by Stable-Baselines3 or CleanRL, as a polydistill teacher.

1. Read the checkpoint without running any code from it: an SB3 ``model.zip`` (``model.save()``: the JSON
   ``data`` member and the ``policy.pth`` state_dict) or a CleanRL ``dqn_atari.py`` ``.cleanrl_model``
   (``torch.save(q_network.state_dict())``), both with ``torch.load(weights_only=True)``; SB3's pickled
   members are never unpickled.
2. Check the format (an SB3 DQN with the default ``CnnPolicy``; CleanRL's ``QNetwork`` layer names, shapes)
   and the preprocessing against ours (grey scale 84x84 frames, the stack size, the action set from the
   shapes and observation space; frame skip, no-op starts and sticky actions, which no checkpoint records,
   from :class:`~polydistill.config.ImportConfig`'s ``source_*`` settings): every difference in one line.
3. Map the weights one to one onto :class:`~polydistill.networks.NatureQNetwork` (both libraries' networks
   are Nature-DQN: three convolutions, a 512-unit layer, one output per action, inputs divided by 255).
4. Play ``record_steps`` agent steps epsilon-greedily in our environment and record them as train-teacher
   does (:class:`~polydistill.replay.FrameReplay`), so export-buffer and the rest of the DAG run unchanged.

The teacher directory (``checkpoint/``, ``dataset/``, ``curve.csv``, ``curve.png``, ``import.json``) is
written under a hidden temporary name beside ``OUT`` and renamed at the end: a failed import leaves nothing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polydistill.errors import PolydistillError

from . import __version__
from .buffer import DatasetWriter, Manifest
from .checkpoint import atomic_write_json, save_checkpoint, sha256_file
from .config import TEACHER_SOURCES, ImportConfig
from .envs import EpisodeStats, action_meanings, canonical_game, make_vector_env, observation_spec
from .networks import FRAME_SIZE, DeviceError, NatureQNetwork, QNetwork, pick_device
from .progress import progress
from .replay import FrameReplay, StepRecorder
from .store import open_store
from .teacher import CURVE_CSV, CURVE_PNG, TeacherResult

log = logging.getLogger(__name__)

RECORD_FILE = "import.json"
#: SB3 ``CnnPolicy`` (``q_net``: NatureCNN features extractor, then ``q_net.q_net``) -> our names.
SB3_LAYERS = {
    "q_net.features_extractor.cnn.0": "torso.net.0",
    "q_net.features_extractor.cnn.2": "torso.net.2",
    "q_net.features_extractor.cnn.4": "torso.net.4",
    "q_net.features_extractor.linear.0": "heads.0.net.0",
    "q_net.q_net.0": "heads.0.net.2",
}
#: CleanRL ``dqn_atari.py``'s ``QNetwork.network`` (an ``nn.Sequential``) -> our names.
CLEANRL_LAYERS = {
    "network.0": "torso.net.0",
    "network.2": "torso.net.2",
    "network.4": "torso.net.4",
    "network.7": "heads.0.net.0",
    "network.9": "heads.0.net.2",
}
LIBRARY = {"sb3": "Stable-Baselines3", "cleanrl": "CleanRL", "polydistill": "polydistill"}


class TeacherImportError(PolydistillError, ValueError):
    """A checkpoint that cannot be imported (format, network, preprocessing); raised before anything is
    written."""


@dataclass
class SourceModel:
    """A checkpoint read and checked: the weights under our names and what it says about its inputs."""

    source: str  # "sb3" or "cleanrl"
    path: Path
    sha256: str
    state: dict[str, torch.Tensor]
    num_actions: int
    frame_stack: int
    frame_shape: tuple[int, int]
    #: What else the checkpoint says (SB3: version, policy module, timesteps), for the metadata.
    details: dict[str, Any] = field(default_factory=dict)
    #: A polydistill teacher: its network as trained (Dueling or Nature), used as is instead of ``state``.
    network: QNetwork | None = None
    #: A polydistill teacher: the observation spec it was trained with (frame skip, no-ops, sticky actions),
    #: which then stands for the ``source_*`` settings a library checkpoint does not record.
    env: dict[str, Any] | None = None


def detect_source(path: str | Path) -> str:
    """``polydistill`` for a directory (a teacher run or its ``checkpoint/``), ``sb3`` for a zip archive holding
    ``data`` and ``policy.pth``, else ``cleanrl``."""
    p = Path(path)
    if p.is_dir():
        return "polydistill"
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            if {"data", "policy.pth"} <= set(z.namelist()):
                return "sb3"
    return "cleanrl"


def _load_weights(data: bytes, path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or non-weights files
        raise TeacherImportError(
            f"{path}: {what} could not be loaded as weights ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TeacherImportError(f"{path}: {what} is not a state_dict of tensors")
    return state


def _renamed(state: dict[str, torch.Tensor], layers: dict[str, str], path: Path, what: str,
             ignore: str | None = None) -> dict[str, torch.Tensor]:
    """``state`` with ``layers``' prefixes renamed; any other key (but those starting with ``ignore``) or a
    missing one is an error naming them."""
    want = {f"{src}.{p}": f"{dst}.{p}" for src, dst in layers.items() for p in ("weight", "bias")}
    keys = {k for k in state if not (ignore and k.startswith(ignore))}
    missing, extra = sorted(set(want) - keys), sorted(keys - set(want))
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"unexpected {', '.join(extra[:3])}"] if extra else [])
        raise TeacherImportError(f"{path}: not {what} ({'; '.join(parts)})")
    return {want[k]: state[k] for k in want}


def _space(data: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    space = data.get(name)
    if not isinstance(space, dict):
        raise TeacherImportError(f"{path}: the archive's data has no {name}; save the model with model.save()")
    return space


def read_sb3(path: str | Path) -> SourceModel:
    """Read and check an SB3 DQN ``model.zip``; see the module docstring."""
    p = Path(path)
    if not p.is_file():
        raise TeacherImportError(f"{p} not found: pass the .zip file that SB3's model.save() wrote")
    if not zipfile.is_zipfile(p):
        raise TeacherImportError(f"{p}: not a Stable-Baselines3 model (not a zip archive); pass model.save()'s .zip")
    try:
        with zipfile.ZipFile(p) as z:
            names = set(z.namelist())
            if not {"data", "policy.pth"} <= names:
                raise TeacherImportError(
                    f"{p}: not a Stable-Baselines3 model (no data/policy.pth member); for a CleanRL state_dict "
                    f"use --from cleanrl")
            data = json.loads(z.read("data"))
            policy = z.read("policy.pth")
            version = z.read("_stable_baselines3_version").decode().strip() if (
                "_stable_baselines3_version" in names) else ""
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TeacherImportError(
            f"{p}: a damaged Stable-Baselines3 archive ({type(e).__name__}); save the model again") from None
    module = str((data.get("policy_class") or {}).get("__module__", ""))
    if not module.startswith("stable_baselines3.dqn"):
        raise TeacherImportError(
            f"{p}: a {module or 'unknown'} policy; only Stable-Baselines3 DQN (CnnPolicy) checkpoints import")
    if (data.get("policy_kwargs") or {}).get("normalize_images") is False:
        raise TeacherImportError(f"{p}: trained with normalize_images=False; ours divide pixels by 255")
    obs, act = _space(data, "observation_space", p), _space(data, "action_space", p)
    if "Discrete" not in str(act.get(":type:", "")):
        raise TeacherImportError(f"{p}: action space {act.get(':type:')}, not Discrete; import a DQN for Atari")
    shape = tuple(int(x) for x in (obs.get("_shape") or ()))
    if "Box" not in str(obs.get(":type:", "")) or obs.get("dtype") != "uint8" or len(shape) != 3:
        raise TeacherImportError(
            f"{p}: observations {obs.get(':type:')} {obs.get('dtype')} {list(shape)}, not uint8 image stacks "
            f"(C, 84, 84): train on SB3's AtariWrapper with VecFrameStack(n_stack=4)")
    state = _renamed(_load_weights(policy, p, "policy.pth"), SB3_LAYERS, p,
                     "an SB3 DQN CnnPolicy (default net_arch)", ignore="q_net_target.")
    return SourceModel(
        source="sb3", path=p, sha256=sha256_file(p), state=state, num_actions=int(act["n"]),
        frame_stack=shape[0], frame_shape=(shape[1], shape[2]),
        details={"sb3_version": version, "policy_module": module, "num_timesteps": data.get("num_timesteps"),
                 "observation_shape": list(shape)},
    )


def read_cleanrl(path: str | Path) -> SourceModel:
    """Read and check a CleanRL ``dqn_atari.py`` Q-network state_dict; see the module docstring."""
    p = Path(path)
    if not p.is_file():
        raise TeacherImportError(f"{p} not found: pass the .cleanrl_model file dqn_atari.py saved")
    if detect_source(p) == "sb3":
        raise TeacherImportError(f"{p}: a Stable-Baselines3 archive, not a CleanRL state_dict; use --from sb3")
    state = _renamed(_load_weights(p.read_bytes(), p, "the file"), CLEANRL_LAYERS, p,
                     "a CleanRL dqn_atari.py QNetwork state_dict")
    conv, fc = state["torso.net.0.weight"], state["heads.0.net.0.weight"]
    side = _frame_side(fc.shape[1] // 64) if fc.dim() == 2 and fc.shape[1] % 64 == 0 else 0
    return SourceModel(
        source="cleanrl", path=p, sha256=sha256_file(p), state=state,
        num_actions=int(state["heads.0.net.2.weight"].shape[0]), frame_stack=int(conv.shape[1]),
        frame_shape=(side, side),
    )


def read_polydistill(path: str | Path) -> SourceModel:
    """Read a polydistill teacher: a ``train-teacher`` (or ``import-teacher``) directory or its ``checkpoint/``,
    such as a teacher trained across sittings with the exact resume, or a pipeline run's published teacher.
    Its weights are checked against their recorded sha256 and architecture (:func:`teacher.load_teacher`)."""
    from .checkpoint import CheckpointError
    from .teacher import load_teacher

    p = Path(path)
    if not p.is_dir():
        raise TeacherImportError(f"{p} not found: pass a train-teacher directory (or its checkpoint/)")
    record = p / "run.json"
    if record.is_file() and not (p / "checkpoint").is_dir():
        raise TeacherImportError(f"{p}: a teacher run that has not finished (no checkpoint/ yet); run its "
                                 "train-teacher command again to finish it, then import it")
    ckpt = p / "checkpoint" if (p / "checkpoint").is_dir() else p
    try:
        net, meta = load_teacher(ckpt)
    except (CheckpointError, OSError, ValueError) as e:
        raise TeacherImportError(f"{p}: not a polydistill teacher ({str(e).splitlines()[0][:200]})") from None
    obs = meta.get("observation") or {}
    stack, shape = int(obs.get("frame_stack", 0) or 0), tuple(int(x) for x in obs.get("frame_shape", ()) or ())
    return SourceModel(
        source="polydistill", path=p, sha256=str(meta.get("sha256") or sha256_file(ckpt / "model.pt")), state={},
        num_actions=len(meta["action_meanings"][0]), frame_stack=stack,
        frame_shape=(shape[0], shape[1]) if len(shape) == 2 else (0, 0),
        details={"game": meta.get("game"), "num_timesteps": meta.get("steps"),
                 "package_version": meta.get("package_version")},
        network=net, env=dict(obs),
    )


def _frame_side(cells: int) -> int:
    """The square input side whose Nature-DQN torso output has ``cells`` positions (7x7 for 84); 0 if none."""
    for side in range(36, 256):
        out = ((side - 8) // 4 + 1 - 4) // 2 + 1 - 2
        if out > 0 and out * out == cells:
            return side
    return 0


def read_source(source: str, path: str | Path) -> SourceModel:
    """The checkpoint at ``path`` read as ``source`` (``sb3``, ``cleanrl`` or ``auto``)."""
    if source == "auto":
        source = detect_source(path) if Path(path).exists() else "sb3"
    if source not in TEACHER_SOURCES:
        raise TeacherImportError(f"--from {source!r}: choose one of {', '.join(TEACHER_SOURCES)}")
    return {"sb3": read_sb3, "cleanrl": read_cleanrl, "polydistill": read_polydistill}[source](path)


def preprocessing_differences(src: SourceModel, game: str, cfg: ImportConfig) -> list[str]:
    """What in the source's preprocessing differs from ours (empty when nothing does)."""
    env = cfg.env
    out = []
    if src.frame_shape != (FRAME_SIZE, FRAME_SIZE):
        out.append(f"frames {src.frame_shape[0]}x{src.frame_shape[1]} (ours {FRAME_SIZE}x{FRAME_SIZE})")
    if src.frame_stack in (3, 3 * env.frame_stack):
        out.append(f"{src.frame_stack} input channels: RGB frames? (ours: grey scale, a stack of {env.frame_stack})")
    elif src.frame_stack != env.frame_stack:
        out.append(f"a stack of {src.frame_stack} frames (ours {env.frame_stack})")
    n = len(action_meanings(game, env.full_action_space))
    if src.num_actions != n:
        which = "full" if env.full_action_space else "minimal"
        out.append(f"{src.num_actions} actions ({game}'s {which} action set has {n})")
    told = src.env or {}  # a polydistill teacher says how it was trained; a library checkpoint does not
    for name, key, theirs, ours in (("frame skip", "frame_skip", cfg.source_frame_skip, env.frame_skip),
                                    ("no-op starts", "noop_max", cfg.source_noop_max, env.noop_max),
                                    ("sticky actions", "sticky_actions", cfg.source_sticky_actions,
                                     env.sticky_actions)):
        theirs = told.get(key, theirs)
        if theirs != ours:
            out.append(f"{name} {theirs} (ours {ours})")
    if src.source == "polydistill" and src.details.get("game") != game:
        out.append(f"a teacher of {src.details.get('game')}, not of {game}")
    return out


def check_preprocessing(src: SourceModel, game: str, cfg: ImportConfig) -> None:
    """Raise :class:`TeacherImportError` naming every difference of :func:`preprocessing_differences`."""
    diffs = preprocessing_differences(src, game, cfg)
    if diffs:
        raise TeacherImportError(
            f"{src.path}: its preprocessing differs from ours for {game}: {'; '.join(diffs)}. Import a model "
            f"trained as ours are (84x84 grey, stack of 4, frame skip 4, 30 no-ops), or set our env settings "
            f"(--frame-skip, --noop-max, --frame-stack, --sticky-actions) to match")


def build_teacher(src: SourceModel) -> QNetwork:
    """The source's Q-network with its weights (eval mode, on the CPU): a polydistill teacher's own network,
    a library's as a :class:`NatureQNetwork`."""
    if src.network is not None:
        return src.network.cpu().eval().requires_grad_(False)
    net = NatureQNetwork(src.num_actions, frame_stack=src.frame_stack)
    try:
        net.load_state_dict(src.state)
    except RuntimeError as e:
        first = str(e).splitlines()[-1].strip()[:160]
        raise TeacherImportError(f"{src.path}: its layer shapes are not Nature-DQN's ({first})") from None
    return net.eval().requires_grad_(False)


def _record(game: str, cfg: ImportConfig, net: QNetwork, device: torch.device
            ) -> tuple[FrameReplay, list[tuple[int, float, int, float]]]:
    """Play ``cfg.record_steps`` agent steps epsilon-greedily; the replay holding them and the episodes."""
    n = cfg.num_envs
    replay = FrameReplay(max(cfg.record_steps, n * (cfg.env.frame_stack + 2)), n, cfg.env.frame_stack)
    envs = make_vector_env(game, n, cfg.env)
    rng = np.random.default_rng(cfg.seed)
    curve: list[tuple[int, float, int, float]] = []
    try:
        obs, info = envs.reset(seed=cfg.seed)
        recorder, stats = StepRecorder(replay, np.asarray(info["lives"])), EpisodeStats(n)
        step = 0
        bar = progress(cfg.record_steps, f"import-teacher {game}", "step")
        while step < cfg.record_steps:
            with torch.inference_mode():
                greedy = net(torch.from_numpy(obs).to(device)).argmax(1).cpu().numpy()
            explore = rng.random(n) < cfg.epsilon
            actions = np.where(explore, rng.integers(0, net.num_actions[0], size=n), greedy).astype(np.int64)
            next_obs, rewards, terminated, truncated, info = envs.step(actions)
            ended = stats.update(rewards, terminated, truncated)
            stored = recorder.record(obs, actions, rewards, terminated, truncated, np.asarray(info["lives"]))
            obs = next_obs
            k = int(stored.sum())
            step += k
            bar.update(k)
            curve.extend((step, ret, length, cfg.epsilon) for _, ret, length in ended)
        bar.close()
    finally:
        envs.close()
    return replay, curve


def _write(tmp: Path, game: str, cfg: ImportConfig, src: SourceModel, net: QNetwork,
           replay: FrameReplay, curve: list[tuple[int, float, int, float]]) -> dict[str, Any]:
    """Everything of a teacher directory into ``tmp``; returns the import record."""
    from .plots import plot_learning_curve

    meanings = action_meanings(game, cfg.env.full_action_space)
    origin = {"library": src.source, "file": src.path.name, "sha256": src.sha256, **src.details}
    steps = int(src.details.get("num_timesteps") or 0)
    save_checkpoint(tmp / "checkpoint", net, {
        "kind": "teacher", "game": game, "games": [game], "action_meanings": [meanings],
        "observation": observation_spec(cfg.env), "config": cfg.model_dump(mode="json"), "steps": steps,
        "imported_from": origin,
    })
    rows = replay.recent(cfg.record_steps)
    manifest = Manifest(
        game=game, num_actions=len(meanings), action_meanings=meanings, observation=observation_spec(cfg.env),
        codec="zstd", source={"teacher_steps": steps, "recorded_steps": len(rows["actions"]), "seed": cfg.seed,
                              "imported_from": src.source, "epsilon": cfg.epsilon},
    )
    writer = DatasetWriter(open_store(str((tmp / "dataset").resolve())), manifest, shard_steps=10_000)
    writer.add(**rows)
    writer.close()
    with open(tmp / CURVE_CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "episode_return", "episode_length", "epsilon"])
        w.writerows(curve)
    plot_learning_curve([c[0] for c in curve], [c[1] for c in curve], tmp / CURVE_PNG,
                        f"{game}: {LIBRARY[src.source]} teacher, recording (epsilon {cfg.epsilon})")
    record = {"stage": "import-teacher", "game": game, "source": origin, "config": cfg.model_dump(mode="json"),
              "package_version": __version__, "episodes": len(curve)}
    atomic_write_json(tmp / RECORD_FILE, record)
    return record


def _result(out: Path, record: dict[str, Any]) -> TeacherResult:
    returns = []
    with open(out / CURVE_CSV) as f:
        returns = [float(row["episode_return"]) for row in csv.DictReader(f)]
    last = returns[-20:]
    return TeacherResult(
        out_dir=out, checkpoint_dir=out / "checkpoint", dataset_uri=(out / "dataset").resolve().as_uri(),
        curve_csv=out / CURVE_CSV, curve_png=out / CURVE_PNG, steps=int(record["config"]["record_steps"]),
        episodes=len(returns), final_return_mean=float(np.mean(last)) if last else float("nan"),
    )


def _existing(out: Path, game: str, cfg: ImportConfig, sha: str) -> TeacherResult | None:
    """The finished import in ``out`` if it is this one; refuses any other existing ``out``."""
    if not out.exists():
        return None
    rec_path = out / RECORD_FILE
    try:
        rec = json.loads(rec_path.read_text()) if rec_path.is_file() else None
    except (OSError, ValueError):
        rec = None
    if rec and rec.get("game") == game and rec.get("source", {}).get("sha256") == sha and (
            rec.get("config") == cfg.model_dump(mode="json")):
        log.info("%s already holds this import of %s; reusing it", out, game)
        return _result(out, rec)
    raise TeacherImportError(f"--out {out} already exists and is not this import; remove it or pick another --out")


def import_teacher(source: str, path: str | Path, game: str, cfg: ImportConfig, out_dir: str | Path) -> TeacherResult:
    """Import the SB3 or CleanRL DQN at ``path`` as ``game``'s teacher in ``out_dir`` (see the module docstring).

    Args:
        source: ``sb3``, ``cleanrl`` or ``auto`` (told apart by content).
        path: the checkpoint file.
        game: any accepted spelling of the game the source was trained on.
        cfg: the source's preprocessing and the recording settings.
        out_dir: the teacher directory to create (the same import there again is reused).
    """
    game = canonical_game(game)
    out = Path(out_dir)
    try:
        device = pick_device(cfg.device)
    except DeviceError as e:
        raise TeacherImportError(str(e)) from None
    src = read_source(source, path)
    check_preprocessing(src, game, cfg)
    net = build_teacher(src)
    done = _existing(out, game, cfg, src.sha256)
    if done is not None:
        return done
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.import-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        replay, curve = _record(game, cfg, net.to(device), device)
        record = _write(tmp, game, cfg, src, net.cpu(), replay, curve)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("imported %s teacher %s (sha256 %s) for %s into %s", LIBRARY[src.source], src.path, src.sha256[:12],
             game, out)
    return _result(out, record)
