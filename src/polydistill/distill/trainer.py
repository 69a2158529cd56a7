"""The distillation run: :func:`distill`, its training loop (:class:`_Trainer`), resume points, and the
finished student checkpoint."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from .. import losses as L
from ..checkpoint import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_json,
    load_checkpoint,
    load_state_dict,
    read_metadata,
    save_checkpoint,
)
from ..config import DistillConfig
from ..latent_input import METADATA_KEY, save_input_autoencoders
from ..networks import DuelingQNetwork, QNetwork, count_parameters, make_adam, pick_device, scheduled_lr, set_lr
from ..progress import MetricsCallback, progress
from ..rundir import RunDir
from ..sampling import StreamingSampler
from .curves import CURVES_CSV, CURVES_PNG, _write_curves
from .data import _attach_decoders, _inputs, _load_validation, _targets, _validate
from .errors import DistillError
from .games import _Game, _prepare_games
from .layout import StudentLayout, build_student
from .objective import compute_losses

log = logging.getLogger(__package__)  # one logger for the package, named as before the split

REGRESSORS_FILE = "regressors.pt"


@dataclass
class DistillResult:
    """Where a finished distillation run put its outputs, and its final validation figures.

    ``agreement`` is the held-out fraction (0..1) of states where the student's greedy action equals the
    teacher's; ``final_loss`` the held-out distillation loss; ``samples_per_second`` training states per
    second (all games, validation and checkpoints excluded); ``parameters`` the student's parameter count.
    """

    out_dir: Path
    checkpoint_dir: Path
    curves_csv: Path
    curves_png: Path
    agreement: dict[str, float]
    final_loss: dict[str, float]
    samples_per_second: float
    parameters: int
    steps: int = 0


def _run_record(games: list[_Game], cfg: DistillConfig) -> dict[str, Any]:
    return {
        "games": [g.game for g in games],
        "teachers": {g.game: g.teacher_meta.get("sha256") for g in games},
        "datasets": {g.game: g.dataset_uri for g in games},
        "config": cfg.model_dump(mode="json"),
        "package_version": __version__,
    }


def _sampler_seed(seed: int, game_index: int, step: int) -> int:
    """Seed of a game's minibatch stream for a segment of training that starts at ``step``."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, game_index, step]).generate_state(1)[0])


def distill(
    teachers: Mapping[str, str | Path],
    datasets: Mapping[str, str | Path],
    cfg: DistillConfig,
    out_dir: str | Path,
    on_metrics: MetricsCallback | None = None,
    stop_after: int | None = None,
) -> DistillResult:
    """Distill every game's teacher into one student; see the module docstring.

    Args:
        teachers: ``{game: teacher run or checkpoint directory}``.
        datasets: ``{game: dataset URI}`` (frame datasets for ``full``/``subset``, latent ones for
            ``latent``).
        cfg: the resolved distillation config.
        out_dir: run directory; an interrupted run there is resumed, a finished one reused.
        on_metrics: called with ``(metrics, step)`` at each validation: ``agreement/GAME``, ``loss/GAME``,
            ``train_loss/GAME``, ``samples_per_second``.
        stop_after: stop (as if killed, raising ``KeyboardInterrupt``) after this many optimizer steps of
            this call; for tests of resume.
    """
    games, layout, init_game = _prepare_games(teachers, datasets, cfg)
    record = _run_record(games, cfg)
    rd = RunDir(out_dir, "distillation", DistillError)
    rd.open({"games": record["games"], "teachers": record["teachers"]}, record["config"], cfg.resume_free,
            describe={"games": "of {old}, not {new}", "teachers": "distilled from other teacher checkpoints"})
    if rd.finished and (rd.out / "checkpoint" / "metadata.json").is_file():
        log.info("distillation in %s is already finished; reusing it", rd.out)
        return _result_from_disk(rd.out)
    device = pick_device(cfg.device)
    if cfg.source == "latent":
        _attach_decoders(games, device)  # a bad latent dataset fails here, before the run directory exists
    if rd.previous is None:
        rd.begin(record)
    trainer = _Trainer(games, layout, init_game, cfg, rd, device, on_metrics)
    trainer.train(stop_after)
    return _finish(rd, games, layout, cfg, trainer.student, trainer.regressors, trainer.curve, trainer.chance,
                   trainer.samples, trainer.train_seconds)


class _Trainer:
    """One distillation run: the student, its optimizer, and the state a resume point holds.

    :meth:`train` reads top to bottom like CleanRL's loops: draw the step's batch (one step ahead on a worker
    thread), compute the per-game losses, update, and every ``eval_every`` steps validate, every
    ``checkpoint_every`` steps write a resume point.
    """

    def __init__(
        self,
        games: list[_Game],
        layout: StudentLayout,
        init_game: str | None,
        cfg: DistillConfig,
        rd: RunDir,
        device: torch.device,
        on_metrics: MetricsCallback | None,
    ) -> None:
        self.games, self.layout, self.cfg, self.rd, self.device = games, layout, cfg, rd, device
        self.on_metrics = on_metrics
        self.names = [g.game for g in games]
        self.chance = {g: 1.0 / layout.num_actions(g) for g in self.names}
        self.need_features = L.LOSSES[cfg.loss].needs_features
        for g in games:
            # The teacher network is needed for targets the dataset lacks, for features, or to copy its weights.
            if self.need_features or not g.dataset.has_q or g.game == init_game:
                net, _ = load_checkpoint(g.teacher_dir, device)
                assert isinstance(net, QNetwork)  # _prepare_games checked the kind
                g.teacher = net.requires_grad_(False)
            _load_validation(g, cfg, device)
        frame_stack = games[0].dataset.manifest.frame_stack
        teacher_nets = {g.game: g.teacher for g in games if g.teacher is not None}
        self.student = build_student(layout, cfg, teacher_nets, frame_stack).to(device)
        self.regressors = nn.ModuleDict()
        if self.need_features:
            for g in games:
                assert g.teacher is not None
                self.regressors[g.game] = nn.Linear(self.student.feature_dim, g.teacher.feature_dim)
            self.regressors.to(device)
        params = [*self.student.parameters(), *self.regressors.parameters()]
        self.opt = make_adam(params, device, lr=cfg.learning_rate)
        self.step, self.train_seconds, self.samples = 0, 0.0, 0
        self.curve: list[dict[str, float]] = []
        self._reset_train_means()
        if rd.previous is not None:
            self._restore()
        self._make_samplers()

    # ------------------------------------------------------------------------------------------ the loop

    def train(self, stop_after: int | None) -> None:
        """Train from the current step to ``cfg.steps`` (or stop as if killed after ``stop_after`` steps)."""
        cfg = self.cfg
        if self.step == 0 and not self.curve:
            self._validate(0)  # the untrained student's agreement: where the curve starts
        start_step = self.step
        bar = progress(cfg.steps, "distill", "step", initial=self.step)
        try:
            # One worker, one batch in flight: the samplers are drawn in step order, so runs stay reproducible.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="distill-batches") as worker:
                pending = worker.submit(self._batch, self.step) if self.step < cfg.steps else None
                while pending is not None:
                    t0 = time.perf_counter()
                    inputs, targets = pending.result()
                    pending = worker.submit(self._batch, self.step + 1) if self.step + 1 < cfg.steps else None
                    self._update(inputs, targets)
                    self.train_seconds += time.perf_counter() - t0
                    self.samples += sum(len(x) for x in inputs.values())
                    self.step += 1
                    bar.update(1)
                    if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                        bar.set_postfix(self._validate(self.step))
                    if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                        self._snapshot()
                    if stop_after is not None and self.step - start_step >= stop_after and self.step < cfg.steps:
                        raise KeyboardInterrupt(f"stop_after={stop_after} reached at step {self.step}")
        finally:
            bar.close()
        if not self.curve or self.curve[-1]["step"] != cfg.steps:
            self._validate(cfg.steps)  # resumed exactly at the end, or steps == 0 after a resume

    def _batch(self, at: int) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor | None]]]:
        """Step ``at``'s inputs and teacher targets: sampling, decoding, stored or computed targets. None of
        it depends on the student, so it runs one step ahead on a worker thread (like a one-worker
        DataLoader): decoding latents or the teacher's forward pass overlaps the student's update."""
        games = self.games if self.cfg.schedule == "sum" else [self.games[at % len(self.games)]]
        inputs, targets = {}, {}
        for g in games:
            assert g.sampler is not None
            batch = next(g.sampler)
            x = _inputs(g, batch, self.device)
            inputs[g.game] = x
            targets[g.game] = _targets(g, batch.q, x, self.need_features, self.device)
        return inputs, targets

    def _update(
        self, inputs: dict[str, torch.Tensor], targets: dict[str, tuple[torch.Tensor, torch.Tensor | None]]
    ) -> None:
        """One optimizer step on the sum of the games' losses."""
        cfg = self.cfg
        per_game = compute_losses(self.student, self.layout, cfg, inputs, targets, self.regressors)
        total = torch.stack(list(per_game.values())).sum()
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        set_lr(self.opt, scheduled_lr(cfg.learning_rate, cfg.lr_schedule, self.step, cfg.steps))
        self.opt.step()
        for g, v in per_game.items():
            self.train_sum[g] += float(v.detach())
            self.train_count[g] += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------------------------------ measuring

    def _reset_train_means(self) -> None:
        self.train_sum = dict.fromkeys(self.names, 0.0)
        self.train_count = dict.fromkeys(self.names, 0)

    def _validate(self, at: int) -> dict[str, str]:
        """Held-out loss and agreement per game at step ``at``: a curve row, the metrics callback, and the
        progress bar's postfix (returned). Resets the running training-loss means."""
        val = _validate(self.student, self.layout, self.cfg, self.games, self.regressors, self.device)
        sps = self.samples / self.train_seconds if self.train_seconds > 0 else float("nan")
        row: dict[str, float] = {"step": at, "samples_per_second": sps}
        for g, (loss, agree) in val.items():
            row[f"loss/{g}"], row[f"agreement/{g}"] = loss, agree
            n = self.train_count[g]
            row[f"train_loss/{g}"] = self.train_sum[g] / n if n else float("nan")
        self.curve.append(row)
        _write_curves(self.rd.out, self.names, self.curve, self.chance, plot=False)
        if self.on_metrics:  # NaN (no training yet at step 0) is left out rather than logged
            self.on_metrics({k: float(v) for k, v in row.items() if k != "step" and math.isfinite(v)}, at)
        self._reset_train_means()
        post = {"sps": f"{self.samples / max(self.train_seconds, 1e-9):.0f}"}
        post.update({f"agree_{g}": f"{a:.2f}" for g, (_, a) in val.items()})
        return post

    # ------------------------------------------------------------------------------------------ resuming

    def _make_samplers(self) -> None:
        """Each game's minibatch stream, seeded by the step it starts at (a resumed run draws what an
        unbroken run would)."""
        cfg = self.cfg
        fraction = cfg.subset_fraction if cfg.source == "subset" else 1.0
        for i, g in enumerate(self.games):
            g.sampler = StreamingSampler(
                g.dataset,
                cfg.batch_size,
                fraction=fraction,
                split="train",
                holdout_fraction=cfg.holdout_fraction,
                pool_shards=cfg.cache_shards,
                seed=_sampler_seed(cfg.seed, i, self.step),
            )

    def _snapshot(self) -> None:
        at = self.step
        state = {
            "student": self.student.state_dict(),
            "regressors": self.regressors.state_dict(),
            "optimizer": self.opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "step": torch.tensor(at),
        }
        extra = {
            "curve": self.curve,
            "train_seconds": self.train_seconds,
            "samples": self.samples,
            "sampler_seeds": {g: _sampler_seed(self.cfg.seed, i, at) for i, g in enumerate(self.names)},
        }

        def write(d: Path) -> None:
            atomic_torch_save(state, d / "state.pt")
            atomic_write_json(d / "extra.json", extra)

        self.rd.save_resume(at, write)

    def _restore(self) -> None:
        point = self.rd.latest_resume(required=("state.pt", "extra.json"))
        if point is None:
            return
        try:
            state = load_state_dict(point / "state.pt")
            extra = json.loads((point / "extra.json").read_text())
        except (CheckpointError, json.JSONDecodeError) as e:
            raise DistillError(f"cannot resume from {point}: {e}. Delete {self.rd.resume_root} to start over") from e
        self.student.load_state_dict(state["student"])
        self.regressors.load_state_dict(state["regressors"])
        self.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.curve = extra["curve"]
        self.train_seconds, self.samples = float(extra["train_seconds"]), int(extra["samples"])
        log.info("resuming distillation from step %d (%s)", self.step, point)


def _finish(
    rd: RunDir,
    games: list[_Game],
    layout: StudentLayout,
    cfg: DistillConfig,
    student: DuelingQNetwork,
    regressors: nn.ModuleDict,
    curve: list[dict[str, float]],
    chance: dict[str, float],
    samples: int,
    train_seconds: float,
) -> DistillResult:
    out = rd.out
    names = [g.game for g in games]
    last = curve[-1]
    agreement = {g: float(last[f"agreement/{g}"]) for g in names}
    final_loss = {g: float(last[f"loss/{g}"]) for g in names}
    sps = samples / train_seconds if train_seconds > 0 else 0.0
    meta: dict[str, Any] = {
        "kind": "student",
        "games": names,
        "actions": layout.actions,
        "head_for_game": layout.head_for_game,
        "action_meanings": layout.action_meanings,
        "teachers": {g.game: g.teacher_meta.get("sha256") for g in games},
        "teacher_paths": {g.game: str(g.teacher_dir) for g in games},
        "datasets": {g.game: g.dataset_uri for g in games},
        "source": cfg.source,
        "subset_fraction": cfg.subset_fraction if cfg.source == "subset" else 1.0,
        "width": cfg.width,
        "loss": cfg.loss,
        "tau": cfg.tau,
        "observation": games[0].teacher_meta.get("observation", {}),
        "config": cfg.model_dump(mode="json"),
        "steps": cfg.steps,
        "metrics": {"agreement": agreement, "loss": final_loss, "samples_per_second": sps},
        "parameters": count_parameters(student),
    }
    if layout.actions == "union":
        meta["union_action_map"] = layout.union_action_map
    if cfg.source == "latent":
        # The student plays through the autoencoders its codes came from (polydistill.latent_input).
        meta[METADATA_KEY] = save_input_autoencoders(out / "checkpoint", {
            g.game: (g.decoder.model, g.decoder.metadata, str(g.dataset.manifest.source.get("code_dtype")),
                     g.dataset_uri) for g in games}, names)
    save_checkpoint(out / "checkpoint", student, meta)
    if len(regressors):
        atomic_torch_save({k: v.detach().cpu() for k, v in regressors.state_dict().items()}, out / REGRESSORS_FILE)
    csv_path, png = _write_curves(out, names, curve, chance)
    rd.finish(_run_record(games, cfg))
    log.info(
        "distilled %s into %s: agreement %s, %.0f samples/s",
        ", ".join(names),
        out / "checkpoint",
        {g: round(a, 3) for g, a in agreement.items()},
        sps,
    )
    return DistillResult(
        out,
        out / "checkpoint",
        csv_path,
        png,
        agreement,
        final_loss,
        sps,
        count_parameters(student),
        cfg.steps,
    )


def _result_from_disk(out: Path) -> DistillResult:
    meta = read_metadata(out / "checkpoint")
    m = meta.get("metrics", {})
    return DistillResult(
        out_dir=out,
        checkpoint_dir=out / "checkpoint",
        curves_csv=out / CURVES_CSV,
        curves_png=out / CURVES_PNG,
        agreement={g: float(v) for g, v in m.get("agreement", {}).items()},
        final_loss={g: float(v) for g, v in m.get("loss", {}).items()},
        samples_per_second=float(m.get("samples_per_second", 0.0)),
        parameters=int(meta.get("parameters", 0)),
        steps=int(meta.get("steps", 0)),
    )
