"""Typed, validated configuration for every stage, and the profiles.

This module is the one source of truth for hyperparameters. The CLI derives its flags from these models
(:func:`flag_fields`), the KFP components receive resolved stage configs as plain dicts, and the pipeline's
parameters are declared in :data:`PIPELINE_PARAMETERS` with defaults taken from here.

Resolution order (later wins): model defaults (the published values) -> profile overrides -> YAML file ->
explicit overrides (CLI flags, pipeline parameters). Unknown keys are errors that name the key.

Units: "steps" are agent steps (one action chosen by the agent = ``frame_skip`` emulator frames) unless a
name says ``frames``; learning rates are per optimizer step; sizes are in transitions unless they say bytes.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, overload

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from polydistill.errors import PolydistillError

from .codecs import DEFAULT_FRAME_CODEC, FRAME_CODECS, LATENT_DTYPES
from .losses import LOSSES

# Allowed values that come from a registry (the losses table, the codecs table) rather than from here: a Literal
# built at runtime, so pydantic validates them and the CLI and pipeline offer them as choices; a type checker
# sees plain strings.
if TYPE_CHECKING:
    LossName = str
    FrameCodecName = str
    LatentDtypeName = str
else:
    LossName = Literal[tuple(LOSSES)]
    FrameCodecName = Literal[FRAME_CODECS]
    LatentDtypeName = Literal[LATENT_DTYPES]

PROFILES = ("smoke", "cpu", "paper")
Profile = Literal["smoke", "cpu", "paper"]


class ConfigError(PolydistillError, ValueError):
    """A configuration value, file or profile is invalid; the message names it and how to fix it."""


class _Model(BaseModel):
    #: Settings a training stage may change when it resumes a run (see :mod:`polydistill.rundir`): they cannot
    #: change what is trained. Every other setting must match the run being resumed.
    resume_free: ClassVar[frozenset[str]] = frozenset()
    #: Settings folded into others before a run is recorded (``TeacherConfig.for_game``: ``game_steps`` becomes
    #: ``total_steps``), so they are not part of a run's identity.
    folded: ClassVar[frozenset[str]] = frozenset()
    #: setting -> the given settings (file, flags, parameters) that drop the profile's value of it, so that it
    #: is not merged into what they ask for (:func:`resolve`).
    profile_dropped_by: ClassVar[Mapping[str, frozenset[str]]] = {}
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @field_validator("device", check_fields=False)
    @classmethod
    def _device_spelling(cls, v: str) -> str:
        # Spelling only (no torch import here); whether the device exists is checked by
        # networks.pick_device before any work starts.
        if not DEVICE_RE.fullmatch(v):
            raise ValueError(f"device {v!r} is not one of auto, cpu, cuda, cuda:N, mps")
        return v


#: Accepted spellings of a torch device setting.
DEVICE_RE = re.compile(r"auto|cpu|cuda|cuda:\d{1,3}|mps")
#: A game's short name as ``game_steps`` keys spell it (``Breakout``; matched by ``envs.game_key``).
GAME_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")


def _parse_game_steps(text: str) -> dict[str, Any]:
    """``"Breakout=200000,Pong=400000"`` (underscores allowed in numbers) -> ``{"Breakout": 200000, ...}``."""
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        game, sep, steps = item.partition("=")
        if not sep or not steps.strip().replace("_", "").isdigit():
            raise ValueError(f"{item!r} is not GAME=STEPS (e.g. Breakout=200000)")
        out[game.strip()] = int(steps.strip().replace("_", ""))
    return out


class EnvConfig(_Model):
    """Atari environment and preprocessing (Mnih et al. 2015; Machado et al. 2018 for sticky actions)."""

    frame_skip: int = Field(
        4, ge=1, description="Emulator frames per agent step (max-pooled over the last 2)."
    )
    noop_max: int = Field(30, ge=0, description="Up to this many no-op actions after reset.")
    frame_stack: int = Field(4, ge=1, description="Frames stacked into one state.")
    sticky_actions: float = Field(
        0.0, ge=0.0, le=1.0, description="Probability of repeating the previous action (ALE v5 uses 0.25)."
    )
    full_action_space: bool = Field(False, description="Use all 18 ALE actions instead of the minimal set.")
    max_episode_frames: int = Field(108_000, ge=1, description="Episode cap in emulator frames (30 min).")
    episodic_life: bool = Field(True, description="Training only: a lost life ends the episode.")
    clip_rewards: bool = Field(True, description="Training only: rewards clipped to their sign.")


class TeacherConfig(_Model):
    """Dueling Double DQN teacher (Wang et al. 2016; van Hasselt et al. 2016).

    Defaults follow CleanRL's ``dqn_atari.py`` (Adam, Huber loss, hard target updates) with the Dueling
    paper's gradient clipping at 10.
    """

    resume_free: ClassVar[frozenset[str]] = frozenset({"device", "checkpoint_every"})
    folded: ClassVar[frozenset[str]] = frozenset({"game_steps"})
    # `--steps N` means N for every game, not N for the games the profile has no budget for; a given
    # game_steps replaces the profile's whole.
    profile_dropped_by: ClassVar[Mapping[str, frozenset[str]]] = {
        "game_steps": frozenset({"total_steps", "game_steps"})}

    total_steps: int = Field(10_000_000, ge=1, description="Agent steps of training, summed over envs.")
    game_steps: dict[str, int] = Field(
        default_factory=dict,
        description=(
            "Per-game total_steps, GAME=STEPS[,GAME=STEPS]: the named games train that many agent steps (a game "
            "that learns slower gets a larger budget), the others total_steps. A total_steps set by a flag, "
            "file or pipeline parameter without game_steps applies to every game."
        ),
    )
    num_envs: int = Field(1, ge=1, description="Parallel environments (AtariVectorEnv threads).")
    buffer_size: int = Field(1_000_000, ge=1, description="Replay memory capacity in transitions.")
    learning_rate: float = Field(1e-4, gt=0, description="Adam learning rate.")
    adam_eps: float = Field(1.5e-4, gt=0, description="Adam epsilon (Dopamine/Rainbow value).")
    gamma: float = Field(0.99, gt=0, le=1, description="Discount factor.")
    batch_size: int = Field(32, ge=1, description="Transitions per learner update.")
    learning_starts: int = Field(80_000, ge=0, description="Agent steps of random play before learning.")
    train_frequency: int = Field(4, ge=1, description="Agent steps between learner updates.")
    n_step: int = Field(
        1, ge=1, le=20, description="Rewards summed into each TD target (1 = Double DQN as published)."
    )
    target_network_frequency: int = Field(1_000, ge=1, description="Agent steps between target-net copies.")
    start_e: float = Field(1.0, ge=0, le=1, description="Initial exploration epsilon.")
    end_e: float = Field(0.01, ge=0, le=1, description="Final exploration epsilon.")
    exploration_fraction: float = Field(
        0.10, gt=0, le=1, description="Fraction of total_steps over which epsilon anneals linearly."
    )
    max_grad_norm: float = Field(10.0, gt=0, description="Gradient norm clip (Dueling paper).")
    record_steps: int = Field(
        1_000_000, ge=1, description="The last N agent steps of training recorded as the experience dataset."
    )
    checkpoint_every: int = Field(100_000, ge=1, description="Agent steps between resumable checkpoints.")
    seed: int = Field(1, description="Seed for environments, networks and sampling.")
    device: str = Field("auto", description="torch device: auto, cpu, cuda, cuda:N.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "fp32",
        description=(
            "Learner number format: fp32; bf16 (autocast, weights and loss fp32); auto = bf16 where the device "
            "multiplies bf16 natively (CUDA Ampere+, CPU with AVX-512 BF16/AMX), else fp32."
        ),
    )
    channels_last: bool = Field(False, description="Run the networks' convolutions in channels-last layout.")
    compile: bool = Field(False, description="torch.compile the learner's forward passes (compiles at start).")
    env: EnvConfig = Field(default_factory=EnvConfig)

    @field_validator("game_steps", mode="before")
    @classmethod
    def _game_steps_spelling(cls, v: Any) -> Any:
        # The CLI flag gives one string; names are data (games), matched by for_game, never paths.
        if isinstance(v, str):
            v = _parse_game_steps(v)
        if isinstance(v, Mapping):
            out: dict[Any, Any] = {}
            for game, steps in v.items():
                if not isinstance(game, str) or not GAME_NAME_RE.fullmatch(game):
                    raise ValueError(f"game {game!r} is not a game name (letters and digits, e.g. Breakout)")
                # A dict parameter reaches a KFP component as a protobuf Struct, whose numbers are all doubles
                # (200000 arrives as 200000.0); a whole-valued double is the int it was, as for total_steps.
                if isinstance(steps, float) and steps.is_integer():
                    steps = int(steps)
                if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                    raise ValueError(f"{game}={steps!r}: steps must be a whole number of agent steps, at least 1")
                out[game] = steps
            return out
        return v

    def for_game(self, game: str) -> TeacherConfig:
        """This config as trained on ``game`` (any spelling: ``Pong``, ``ALE/Pong-v5``): ``total_steps`` from
        ``game_steps`` where it names the game, and ``game_steps`` emptied, so a run's identity is the budget
        it trains, however it was given."""
        from .envs import game_key

        key = game_key(game)
        steps = next((n for g, n in self.game_steps.items() if game_key(g) == key), self.total_steps)
        return self.model_copy(update={"total_steps": steps, "game_steps": {}})

    @field_validator("end_e")
    @classmethod
    def _end_below_start(cls, v: float, info: Any) -> float:
        start = info.data.get("start_e", 1.0)
        if v > start:
            raise ValueError(f"end_e={v} must not exceed start_e={start}")
        return v

    @model_validator(mode="after")
    def _settings_fit_together(self) -> TeacherConfig:
        # A batch the replay can never hold means the learner never runs: refuse it instead of training
        # nothing for hours.
        if self.batch_size >= self.buffer_size:
            raise ValueError(
                f"batch_size={self.batch_size} must be smaller than buffer_size={self.buffer_size} (the replay "
                "it samples from); lower batch_size or raise buffer_size"
            )
        return self


class ExportConfig(_Model):
    """Experience dataset encoding and upload."""

    codec: FrameCodecName = Field(
        DEFAULT_FRAME_CODEC,
        description="Shard codec (polydistill.codecs): zstd-long (long-distance zstd, packed columns), xz (LZMA2 "
        "over the shard, packed columns), zstd (the earlier default, level 3) or raw.",
    )
    zstd_level: int = Field(
        0, ge=0, le=22,
        description="Compression level (zstd 1-22, xz preset 1-9); 0: the codec's own (zstd 3, zstd-long 19, xz 9).",
    )
    shard_steps: int = Field(10_000, ge=1, description="Steps per shard.")
    q_dtype: Literal["float16", "float32", "none"] = Field(
        "float16", description="Store teacher Q-values per step at this precision, or none."
    )
    upload_workers: int = Field(4, ge=1, description="Parallel shard uploads.")

    @model_validator(mode="after")
    def _level_fits_the_codec(self) -> ExportConfig:
        if self.codec == "xz" and self.zstd_level > 9:
            raise ValueError(f"zstd_level={self.zstd_level} is no xz preset: give 1-9, or 0 for xz's own (9)")
        return self


class EncodeConfig(_Model):
    """Encoding a frame dataset to a latent dataset with its game's autoencoder (``encode-buffer``). The
    pipeline derives it from the run's export and autoencoder configs (:func:`pipeline_encode_config`)."""

    code_dtype: LatentDtypeName | None = Field(
        None, description="Stored code precision [default: the autoencoder's code_dtype]."
    )
    shard_steps: int = Field(
        ExportConfig.model_fields["shard_steps"].default, ge=1, description="Agent steps per shard."
    )
    q_dtype: Literal["float16", "float32"] = Field(
        ExportConfig.model_fields["q_dtype"].default, description="Stored Q-value precision."
    )
    batch_size: int = Field(256, ge=1, description="States per encoder/teacher forward pass.")
    device: str = Field("auto", description="torch device: auto, cpu, cuda, cuda:N.")


class AutoencoderConfig(_Model):
    """Per-game convolutional autoencoder over 4x84x84 states (seed paper: 64 float32 codes)."""

    # More epochs extend a finished run from its last epoch.
    resume_free: ClassVar[frozenset[str]] = frozenset({"device", "epochs"})

    latent_dim: int = Field(64, ge=1, description="Size of the latent code.")
    epochs: int = Field(10, ge=1, description="Passes over the training states.")
    batch_size: int = Field(64, ge=1, description="States per optimizer step.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="Learning rate over training: constant, or cosine decay from learning_rate to 0 at the end.",
    )
    loss: Literal["mse", "weighted", "bce", "weighted_bce"] = Field(
        "weighted_bce",
        description=(
            "Reconstruction loss: squared error (mse) or binary cross-entropy on the decoder's logits (bce, "
            "whose gradient survives where the output sigmoid saturates on black backgrounds); weighted_* adds "
            "changed_weight on pixels that change between frames."
        ),
    )
    changed_weight: float = Field(
        20.0, ge=1.0, description="Weight of changed pixels in the weighted losses (1 = unweighted)."
    )
    teacher_weight: float = Field(
        0.0,
        ge=0.0,
        description=(
            "Weight of the teacher-feature term: the squared error between the teacher's convolutional "
            "features of the reconstruction and of the original, relative to the original's (0 = pixels only; "
            "needs the teacher)."
        ),
    )
    teacher_policy_weight: float = Field(
        0.0,
        ge=0.0,
        description=(
            "Weight of the teacher-policy term: KL from the teacher's policy on the original to its policy on "
            "the reconstruction, softmax(Q / 0.01) each (0 = off; needs the teacher)."
        ),
    )
    code_dtype: LatentDtypeName = Field("float16", description="Stored code precision.")
    holdout_fraction: float = Field(0.05, gt=0, lt=0.5, description="States held out for metrics.")
    max_train_states: int = Field(0, ge=0, description="Cap on training states per epoch (0 = all).")
    seed: int = Field(1, description="Seed.")
    device: str = Field("auto", description="torch device.")


class DistillConfig(_Model):
    """Multi-task policy distillation (Rusu et al. 2015; Parisotto et al. 2015; the seed paper)."""

    resume_free: ClassVar[frozenset[str]] = frozenset({"device", "eval_every", "checkpoint_every", "cache_shards"})

    loss: LossName = Field("kl", description="Distillation loss (polydistill.losses.LOSSES).")
    tau: float = Field(0.01, gt=0, description="Teacher softmax temperature for kl (and actor_mimic).")
    beta: float = Field(0.01, ge=0, description="Actor-Mimic feature-regression weight.")
    actions: Literal["shared", "per-game", "union"] = Field("per-game", description="Output head layout.")
    schedule: Literal["sum", "round_robin"] = Field(
        "sum", description="Gradient from the sum of per-game losses (seed) or one game per step (PD)."
    )
    width: float = Field(1.0, gt=0, le=4, description="Student width multiplier vs the teacher network.")
    init: str = Field(
        "random",
        description=(
            "random, teacher:GAME to start from a copy of that teacher (the seed paper), or teacher for the "
            "first game's in name order."
        ),
    )
    source: Literal["full", "subset", "latent"] = Field("subset", description="Training states.")
    subset_fraction: float = Field(0.5, gt=0, le=1, description="Fraction of each buffer used for subset.")
    steps: int = Field(50_000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, description="States per game per step.")
    learning_rate: float = Field(1e-4, gt=0, description="Adam learning rate.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="Learning rate over training: constant, or cosine decay from learning_rate to 0 at the end.",
    )
    holdout_fraction: float = Field(
        0.05, gt=0, lt=0.5, description="States per game held out for validation."
    )
    eval_every: int = Field(1_000, ge=1, description="Optimizer steps between validation passes.")
    checkpoint_every: int = Field(5_000, ge=1, description="Optimizer steps between resumable checkpoints.")
    cache_shards: int = Field(8, ge=1, description="Decoded shards kept in memory per game.")
    seed: int = Field(1, description="Seed.")
    device: str = Field("auto", description="torch device.")


class EvalConfig(_Model):
    """Scoring an agent in the real game (no reward clipping, no life-loss resets)."""

    protocol: Literal["cycles", "episodes"] = Field("episodes", description="Scoring protocol.")
    cycles: int = Field(10, ge=1, description="cycles protocol: number of cycles (seed: 10).")
    cycle_steps: int = Field(
        12_500, ge=1, description="cycles protocol: agent steps per cycle (seed: 12,500)."
    )
    episodes: int = Field(30, ge=1, description="episodes protocol: episodes to play.")
    epsilon: float = Field(0.05, ge=0, le=1, description="Evaluation epsilon-greedy.")
    max_episode_frames: int = Field(
        108_000, ge=1, description="Episode cap in emulator frames (108,000 = 30 min; same for every agent)."
    )
    num_envs: int = Field(8, ge=1, description="Parallel environments.")
    seed: int = Field(12345, description="Evaluation seed; the same seed gives the same scores.")
    device: str = Field("auto", description="torch device.")


class RetrainingConfig(_Model):
    """How one pipeline run relates to the runs before it (recurring retraining; docs/RETRAINING.md)."""

    warm_start: Literal["none", "champion"] = Field(
        "none",
        description=(
            "none: every teacher starts from scratch; champion: each teacher starts from the teacher of the "
            "registered champion's pipeline run for its game (scratch where there is none) and trains "
            "teacher.total_steps more steps (the default of `polydistill schedule`)."
        ),
    )
    seeds: Literal["fixed", "run"] = Field(
        "fixed",
        description=(
            "fixed: the teacher, autoencoder and distill seeds of the config; run: derived from the pipeline "
            "run id, so each run explores anew (`schedule`'s default). The evaluation seed is always the "
            "config's: the champion is compared on the same one."
        ),
    )
    keep_runs: int = Field(
        0,
        ge=0,
        description=(
            "Keep the datasets and teachers of the last N pipeline runs in the store (and always the "
            "champion's); older runs' are deleted at the end of a run. 0 = keep all."
        ),
    )


#: Where an imported teacher's checkpoint comes from (``import-teacher --from``); ``auto`` tells them apart by
#: content (a directory is a polydistill teacher, a zip archive Stable-Baselines3's, a bare state_dict CleanRL's).
TEACHER_SOURCES = ("sb3", "cleanrl", "polydistill")


class ImportConfig(_Model):
    """A teacher imported from Stable-Baselines3 or CleanRL instead of trained (``import-teacher``;
    docs/IMPORT.md): what the source's checkpoint does not say about its preprocessing, and how the imported
    teacher plays to record its states.

    In the pipeline, ``teachers`` names the imported teachers and the recording follows the teacher config
    (:meth:`recording_for`), so an imported teacher records as many steps, as many envs and as seeded as a
    trained one would.
    """

    teachers: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Pipeline: game -> checkpoint (a path, file:// or s3:// URI of an SB3 .zip, a CleanRL state_dict or a "
            "polydistill teacher directory) imported in place of training that game's teacher; empty = train "
            "every teacher."
        ),
    )
    source_frame_skip: int = Field(
        4, ge=1, description="Frame skip the source was trained with (SB3 AtariWrapper and CleanRL default 4)."
    )
    source_noop_max: int = Field(
        30, ge=0, description="No-op starts the source was trained with (SB3 AtariWrapper and CleanRL: 30)."
    )
    source_sticky_actions: float = Field(
        0.0, ge=0.0, le=1.0, description="Sticky-action probability of the source's env (NoFrameskip-v4: 0)."
    )
    epsilon: float = Field(
        0.01, ge=0, le=1, description="Exploration epsilon of the imported teacher while it records its states."
    )
    record_steps: int = Field(1_000_000, ge=1, description="Agent steps played and recorded as the dataset.")
    num_envs: int = Field(1, ge=1, description="Parallel environments while recording.")
    seed: int = Field(1, description="Seed of the recording's environments and exploration.")
    device: str = Field("auto", description="torch device: auto, cpu, cuda, cuda:N.")
    env: EnvConfig = Field(default_factory=EnvConfig)

    def recording_for(self, teacher: TeacherConfig) -> ImportConfig:
        """This config with the recording settings of ``teacher`` (steps, envs, seed, device, env, and its
        final epsilon ``end_e``): what the pipeline's train-teacher task uses for an imported teacher."""
        return self.model_copy(update={
            "record_steps": teacher.record_steps, "num_envs": teacher.num_envs, "seed": teacher.seed,
            "device": teacher.device, "env": teacher.env.model_copy(), "epsilon": teacher.end_e,
        })


def check_teacher_sources(teachers: Mapping[str, str], games: list[str]) -> dict[str, str]:
    """``teachers`` with canonical game names, each one of ``games``; anything else is a :class:`ConfigError`."""
    out = parse_teacher_sources([f"{g}={p}" for g, p in teachers.items()])
    stray = sorted(set(out) - set(games))
    if stray:
        raise ConfigError(f"teachers names {', '.join(stray)}, not among this run's games ({', '.join(games)}); "
                          f"add the game to --games or drop its --teacher")
    return out


def parse_teacher_sources(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["Breakout=runs/sb3/model.zip", ...]`` (``--teacher GAME=PATH``) -> ``{"Breakout": PATH}``, games in
    canonical spelling; a malformed item or a game named twice is a :class:`ConfigError`."""
    from .envs import UnknownGameError, canonical_game

    out: dict[str, str] = {}
    for item in items:
        game, sep, path = item.partition("=")
        if not sep or not game.strip() or not path.strip():
            raise ConfigError(f"--teacher {item!r}: expected GAME=PATH (e.g. Breakout=runs/sb3/dqn.zip)")
        try:
            g = canonical_game(game)
        except UnknownGameError as e:
            raise ConfigError(f"--teacher {item!r}: {e}") from None
        if g in out:
            raise ConfigError(f"--teacher names {g} twice ({out[g]} and {path.strip()}); give one checkpoint per game")
        out[g] = path.strip()
    return out


STAGES: dict[str, type[_Model]] = {
    "teacher": TeacherConfig,
    "export": ExportConfig,
    "autoencoder": AutoencoderConfig,
    "distill": DistillConfig,
    "evaluate": EvalConfig,
    "retraining": RetrainingConfig,
    "import": ImportConfig,
}

#: Every config model by name: the pipeline's stages plus the commands whose settings the pipeline derives
#: from other stages' (``encode``: :func:`pipeline_encode_config`).
MODELS: dict[str, type[_Model]] = {**STAGES, "encode": EncodeConfig}

# Profile overrides per stage; dotted keys reach nested models ("env.sticky_actions").
# smoke: the whole DAG in minutes on 2 CPU cores (plumbing, not learning).
# cpu: a 2-core laptop run whose teachers beat random play; numbers explained in the README's profile table.
# paper: the seed protocol on a GPU cluster.
PROFILE_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "teacher": {
            "total_steps": 2_000,
            "num_envs": 4,
            "buffer_size": 2_000,
            "learning_starts": 500,
            "target_network_frequency": 250,
            "exploration_fraction": 0.5,
            "record_steps": 1_500,
            "checkpoint_every": 1_000,
        },
        "import": {"record_steps": 1_500, "num_envs": 4},
        "export": {"shard_steps": 500},
        "autoencoder": {"epochs": 1, "batch_size": 32, "max_train_states": 512},
        "distill": {"steps": 60, "batch_size": 16, "eval_every": 30, "checkpoint_every": 30},
        "evaluate": {"protocol": "cycles", "cycles": 2, "cycle_steps": 200, "episodes": 2, "num_envs": 2},
    },
    "cpu": {
        # Meant for about 90 minutes of `polydistill run --profile cpu` on 2 cores; docs/EXPERIMENTS.md gives each
        # number's reason and the runs that chose it.
        "teacher": {
            "total_steps": 150_000,
            # Breakout takes off only after 100,000 steps and is on its bar's edge at 150,000; Atlantis trains
            # beside Breakout, so its 200,000 cost no wall time (still not past random play there:
            # docs/EXPERIMENTS.md).
            "game_steps": {"Atlantis": 200_000, "Breakout": 200_000},
            "num_envs": 4,
            "buffer_size": 100_000,
            "learning_starts": 5_000,
            "batch_size": 64,
            "train_frequency": 8,
            "n_step": 3,
            "target_network_frequency": 4_000,
            "exploration_fraction": 0.2,
            "learning_rate": 2e-4,
            "record_steps": 100_000,
            "checkpoint_every": 50_000,
        },
        "import": {"record_steps": 100_000, "num_envs": 4},
        # The whole recorded buffer in one shard: zstd-long's window then spans every episode, whose scenes
        # repeat from episode to episode (0.69x / 0.70x the bytes of 10,000-step shards, docs/STORAGE.md); the
        # distiller keeps it decoded as it kept the ten shards before (706 MB per game).
        "export": {"shard_steps": 100_000},
        "autoencoder": {
            # The latent student learns from reconstructions and plays through the autoencoder: how well the code
            # keeps the teacher's action bounds it; int8 codes keep it at half the bytes (docs/EXPERIMENTS.md).
            "latent_dim": 128,
            "code_dtype": "int8",
            "epochs": 10,
            "max_train_states": 20_000,
            "teacher_weight": 1.0,
            # The teacher's Breakout play through the code: 8.59 with the feature term alone, 13.14 with the
            # policy term as well, against 13.28 on frames (docs/EXPERIMENTS.md).
            "teacher_policy_weight": 1.0,
        },
        "distill": {
            "loss": "mse",  # from a teacher copy: KL's flat-softmax start moved the copy off its policy
            # the latent student's UpNDown head, not a teacher copy, learns longest (docs/EXPERIMENTS.md)
            "steps": 10_000,
            "batch_size": 32,
            "learning_rate": 2.5e-4,
            # decayed to 0: the latent student transfers better to real frames (docs/EXPERIMENTS.md)
            "lr_schedule": "cosine",
            "eval_every": 500,
            "cache_shards": 20,
            "init": "teacher",
        },
        # 64 episodes: DemonAttack's scores have a std about equal to their mean, so 80 % bars cannot be read
        # from 32 (docs/EXPERIMENTS.md, evaluation)
        "evaluate": {"protocol": "episodes", "episodes": 64, "num_envs": 8, "max_episode_frames": 18_000},
    },
    "paper": {
        "teacher": {"total_steps": 10_000_000, "num_envs": 1, "record_steps": 1_000_000},
        "autoencoder": {"epochs": 20},
        "distill": {"steps": 500_000},
        "evaluate": {"protocol": "cycles", "cycles": 10, "cycle_steps": 12_500},
    },
}

# Default games per profile (seed pairs: equal action counts).
PROFILE_GAMES: dict[str, list[str]] = {
    "smoke": ["Pong", "Breakout"],
    "cpu": ["DemonAttack", "UpNDown"],
    "paper": ["Atlantis", "Breakout", "DemonAttack", "UpNDown", "Pong"],
}

M = TypeVar("M", bound=_Model)


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = target
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


def _merge(base: dict[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in updates.items():
        if "." in k:
            nested: dict[str, Any] = {}
            _set_dotted(nested, k, v)
            out = _merge(out, nested)
        elif isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        close = difflib.get_close_matches(profile, PROFILES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}.{hint}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file holding one stage's settings (a mapping)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass a YAML file of the stage's settings")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text (a binary file?); pass a YAML file of settings") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read ({e.strerror}); pass a readable YAML file") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())[:200]  # one line: YAML errors span several
        raise ConfigError(f"config file {p} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of setting: value, got {type(data).__name__}")
    return data


PathArg = str | Path | None
Overrides = Mapping[str, Any] | None


@overload
def resolve(
    stage: Literal["teacher"], profile: str = ..., file: PathArg = ..., overrides: Overrides = ...
) -> TeacherConfig: ...
@overload
def resolve(
    stage: Literal["export"], profile: str = ..., file: PathArg = ..., overrides: Overrides = ...
) -> ExportConfig: ...
@overload
def resolve(
    stage: Literal["autoencoder"], profile: str = ..., file: PathArg = ..., overrides: Overrides = ...
) -> AutoencoderConfig: ...
@overload
def resolve(
    stage: Literal["encode"], profile: str = ..., file: PathArg = ..., overrides: Overrides = ...
) -> EncodeConfig: ...
@overload
def resolve(
    stage: Literal["distill"], profile: str = ..., file: PathArg = ..., overrides: Overrides = ...
) -> DistillConfig: ...
@overload
def resolve(
    stage: Literal["evaluate"], profile: str = ..., file: PathArg = ..., overrides: Overrides = ...
) -> EvalConfig: ...
@overload
def resolve(
    stage: Literal["import"], profile: str = ..., file: PathArg = ..., overrides: Overrides = ...
) -> ImportConfig: ...
@overload
def resolve(
    stage: str, profile: str = ..., file: PathArg = ..., overrides: Overrides = ...
) -> _Model: ...


def resolve(
    stage: str,
    profile: str = "paper",
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> _Model:
    """Return the validated config model for ``stage`` (a key of :data:`MODELS`), typed per stage.

    ``overrides`` may use dotted keys for nested settings; ``None`` values are ignored (unset flags).
    """
    if stage not in MODELS:
        raise ConfigError(f"unknown stage {stage!r}; stages are {', '.join(MODELS)}")
    _check_profile(profile)
    model = MODELS[stage]
    data: dict[str, Any] = _merge({}, PROFILE_OVERRIDES.get(profile, {}).get(stage, {}))
    given: dict[str, Any] = {}
    if file is not None:
        given = _merge(given, read_config_file(file))
    if overrides:
        given = _merge(given, {k: v for k, v in overrides.items() if v is not None})
    for key, triggers in model.profile_dropped_by.items():
        if triggers & set(given):
            data.pop(key, None)
    data = _merge(data, given)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or stage}: {err['msg']}" for err in e.errors()
        )
        source = f" (profile {profile}" + (f", file {file}" if file else "") + ")"
        raise ConfigError(f"invalid {stage} config{source}: {problems}") from None


def flag_fields(model: type[_Model], prefix: str = "") -> list[tuple[str, Any, str]]:
    """Flatten a config model into ``(dotted_key, annotation, description)`` rows for CLI flags."""
    rows: list[tuple[str, Any, str]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, _Model):
            rows.extend(flag_fields(ann, prefix=f"{prefix}{name}."))
        else:
            rows.append((f"{prefix}{name}", ann, field.description or ""))
    return rows


# Pipeline parameters: name -> (stage, dotted key). Their defaults are the profile's values, so a pipeline
# parameter left at its sentinel (None / -1 / "") falls back to the profile. Components and the CLI use
# :func:`resolve_pipeline` so the mapping lives here only.
PIPELINE_PARAMETERS: dict[str, tuple[str, str]] = {
    "teacher_steps": ("teacher", "total_steps"),
    "teacher_game_steps": ("teacher", "game_steps"),
    "teacher_num_envs": ("teacher", "num_envs"),
    "record_steps": ("teacher", "record_steps"),
    "teacher_learning_rate": ("teacher", "learning_rate"),
    "codec": ("export", "codec"),
    "latent_dim": ("autoencoder", "latent_dim"),
    "autoencoder_epochs": ("autoencoder", "epochs"),
    "autoencoder_loss": ("autoencoder", "loss"),
    "autoencoder_teacher_weight": ("autoencoder", "teacher_weight"),
    "code_dtype": ("autoencoder", "code_dtype"),
    "distill_loss": ("distill", "loss"),
    "tau": ("distill", "tau"),
    "actions": ("distill", "actions"),
    "student_width": ("distill", "width"),
    "student_init": ("distill", "init"),
    "subset_fraction": ("distill", "subset_fraction"),
    "distill_steps": ("distill", "steps"),
    "eval_protocol": ("evaluate", "protocol"),
    "eval_episodes": ("evaluate", "episodes"),
    "eval_cycles": ("evaluate", "cycles"),
    "eval_cycle_steps": ("evaluate", "cycle_steps"),
    "warm_start": ("retraining", "warm_start"),
    "seeds": ("retraining", "seeds"),
    "keep_runs": ("retraining", "keep_runs"),
    "teachers": ("import", "teachers"),
}

#: What ``polydistill schedule`` sets unless given: a recurring run improves on the last instead of repeating it.
SCHEDULE_DEFAULTS: dict[str, Any] = {"warm_start": "champion", "seeds": "run"}
#: The stages whose ``seed`` a ``seeds=run`` pipeline run derives from its run id (never ``evaluate``).
DERIVED_SEED_STAGES = ("teacher", "autoencoder", "distill")


def derive_seeds(configs: Mapping[str, dict[str, Any]], run_id: str) -> dict[str, dict[str, Any]]:
    """The resolved stage configs with the training stages' seeds derived from ``run_id`` when
    ``retraining.seeds`` is ``run`` (unchanged otherwise). The seed is the first 31 bits of
    sha256(run id + stage), so reruns of one run id (retries, resumes) get the same seeds."""
    import hashlib

    out = {k: dict(v) for k, v in configs.items()}
    if (out.get("retraining") or {}).get("seeds") != "run":
        return out
    for stage in DERIVED_SEED_STAGES:
        digest = hashlib.sha256(f"{run_id}/{stage}".encode()).digest()
        out[stage]["seed"] = int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
    return out


def _is_unset(v: Any) -> bool:
    # The "use the profile's value" sentinels of pipeline parameters (a KFP parameter cannot be None): None,
    # "" and exactly -1 / -1.0 (pipelines.pipeline.parameter_sentinel gives each parameter its own). Any other
    # negative number (teacher_steps=-5) is a value, refused by the config's own validation rather than
    # silently replaced by the profile's.
    if isinstance(v, bool):
        return False
    return v is None or v == "" or (isinstance(v, int | float) and v == -1) or (isinstance(v, Mapping) and not v)


def pipeline_field(name: str) -> Any:
    """The config field (pydantic ``FieldInfo``) a ``PIPELINE_PARAMETERS`` name sets, dotted keys followed into
    nested models: its annotation and description give the parameter's type, sentinel and help."""
    stage, key = PIPELINE_PARAMETERS[name]
    model: Any = STAGES[stage]
    *parents, leaf = key.split(".")
    for p in parents:
        model = model.model_fields[p].annotation
    return model.model_fields[leaf]


def pipeline_value(name: str, value: Any) -> Any:
    """A pipeline parameter as typed on a command line, as the pipeline takes it: the text of a mapping
    parameter (``--teacher-game-steps Breakout=200000,Pong=400000``) parsed and validated by its setting into
    the mapping; anything else unchanged (validated later, with the rest, by :func:`resolve_pipeline`)."""
    stage, key = PIPELINE_PARAMETERS[name]
    if typing.get_origin(pipeline_field(name).annotation) is not dict or not isinstance(value, str) or not value:
        return value
    try:
        return getattr(STAGES[stage].model_validate({key: value}), key)
    except ValidationError as e:
        problem = "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in e.errors())
        raise ConfigError(f"{name} {value!r}: {problem}") from None


def refuse_sentinels(params: Mapping[str, Any]) -> None:
    """Refuse a command-line value that is a pipeline sentinel (``--teacher-steps -1``, ``--student-init ''``).

    The sentinels exist only because a KFP parameter cannot be None; on the command line a flag left out is
    "the profile's value", so a sentinel typed as a value would be dropped without a word. Raises
    :class:`ConfigError` naming the flag.
    """
    for name, value in params.items():
        if value is not None and _is_unset(value):
            flag = f"--{name.replace('_', '-')}"
            raise ConfigError(f"{flag} {value!r}: {value!r} is the pipeline's internal 'use the profile's value' "
                              f"marker, not a value; leave {flag} out to use the profile's value, or give one")


def resolve_pipeline(profile: str, params: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Resolve every stage config from a profile and pipeline parameters.

    Returns ``{stage: config_dict}`` (JSON-serialisable), validated. Parameters that are unset (``None``,
    ``""``, ``-1`` or ``-1.0``, the pipeline's "use the profile" sentinels) are
    ignored; any other value is validated like a CLI flag, so ``teacher_steps=-5`` is a :class:`ConfigError`
    naming it (``submit`` calls this before sending anything).
    """
    _check_profile(profile)
    params = dict(params or {})
    unknown = sorted(set(params) - set(PIPELINE_PARAMETERS))
    if unknown:
        raise ConfigError(f"unknown pipeline parameter(s) {unknown}; known: {sorted(PIPELINE_PARAMETERS)}")
    per_stage: dict[str, dict[str, Any]] = {s: {} for s in STAGES}
    for name, value in params.items():
        if _is_unset(value):
            continue
        stage, key = PIPELINE_PARAMETERS[name]
        per_stage[stage][key] = value
    out: dict[str, dict[str, Any]] = {}
    for stage, overrides in per_stage.items():
        try:
            out[stage] = resolve(stage, profile, overrides=overrides).model_dump(mode="json")
        except ConfigError as e:
            given = ", ".join(
                f"{n}={params[n]!r}" for n, (st, _) in PIPELINE_PARAMETERS.items() if st == stage and n in params
            )
            raise ConfigError(f"{e} (pipeline parameters: {given or 'none'})") from None
    return out


@overload
def from_dict(stage: Literal["teacher"], data: Mapping[str, Any]) -> TeacherConfig: ...
@overload
def from_dict(stage: Literal["export"], data: Mapping[str, Any]) -> ExportConfig: ...
@overload
def from_dict(stage: Literal["autoencoder"], data: Mapping[str, Any]) -> AutoencoderConfig: ...
@overload
def from_dict(stage: Literal["encode"], data: Mapping[str, Any]) -> EncodeConfig: ...
@overload
def from_dict(stage: Literal["distill"], data: Mapping[str, Any]) -> DistillConfig: ...
@overload
def from_dict(stage: Literal["evaluate"], data: Mapping[str, Any]) -> EvalConfig: ...
@overload
def from_dict(stage: Literal["import"], data: Mapping[str, Any]) -> ImportConfig: ...
@overload
def from_dict(stage: str, data: Mapping[str, Any]) -> _Model: ...


def from_dict(stage: str, data: Mapping[str, Any]) -> _Model:
    """Validate an already-resolved stage config dict (as passed between pipeline tasks)."""
    if stage not in MODELS:
        raise ConfigError(f"unknown stage {stage!r}; stages are {', '.join(MODELS)}")
    try:
        return MODELS[stage].model_validate(dict(data))
    except ValidationError as e:
        raise ConfigError(f"invalid {stage} config: {e}") from None


def pipeline_encode_config(autoencoder: Mapping[str, Any], export: Mapping[str, Any]) -> EncodeConfig:
    """A pipeline run's encode-buffer settings, from its resolved stage configs: the code precision of the
    ``autoencoder`` config, the shard size and Q-value precision of the ``export`` config (the latents are
    sharded like the buffer they encode)."""
    ae, ex = from_dict("autoencoder", autoencoder), from_dict("export", export)
    return from_dict("encode", {"code_dtype": ae.code_dtype, "shard_steps": ex.shard_steps, "q_dtype": ex.q_dtype})


def default_games(profile: str) -> list[str]:
    """The games a profile runs when none are given."""
    _check_profile(profile)
    return list(PROFILE_GAMES[profile])
