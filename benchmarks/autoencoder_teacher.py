"""What an autoencoder keeps of what the game's teacher looks at: the seed's autoencoder against ours, on one
game's trained teacher and its recorded buffer (issue #30's Breakout latent cell).

The seed paper's latent student scored 8.4 on Breakout against its teacher's 212 (4 %): its autoencoder (plain
squared error, 64 float32 codes) blurred away the ball and the paddle, a few pixels each. The latent student
learns from decoded states, so what it can learn is bounded by whether the teacher still acts the same on a
reconstruction. This benchmark trains, with one budget on one buffer, each of:

- ``seed``: plain squared error, 64 float32 codes, no teacher term (the seed paper's autoencoder);
- ``cpu, no teacher term``: the ``cpu`` profile's autoencoder (128 int8 codes, changed-pixel weighted
  cross-entropy) with ``teacher_weight`` 0;
- ``cpu``: the ``cpu`` profile's autoencoder as the pipeline trains it;
- with ``--autoencoder DIR``, also the one a ``polydistill run`` trained (at the profile's own budget);

and measures each on the same held-out states (codes at their stored precision):

    option | B/state | PSNR dB | changed MSE | object recall | agreement | agreement, decisive | feature error

``object recall``: of the newest frame's moving bright pixels (changed against the frame before and brighter
than 0.2 in the original: Breakout's ball and paddle), the share the reconstruction draws at least half as
bright. ``agreement``: share of held-out states on which the teacher's greedy action on the reconstruction
equals its action on the original; ``decisive``: the same over the quarter of states with the largest gap
between the teacher's best and second-best Q-value (where the action matters: a ball about to pass the paddle,
not a ball in flight). ``feature error``: the teacher's relative feature error
(:func:`polydistill.autoencoder.teacher_feature_error`). It writes ``--out/teacher-view-GAME.png``: for the
decisive states, the original newest frame and each option's reconstruction, whole and magnified around the
motion, each with the teacher's action on it.

With ``--student DIR`` (a latent student, with the ``--autoencoder`` it was distilled through) it also prints
the student's agreement with the teacher on the held-out originals and on their reconstructions: a student that
agrees on reconstructions but not on originals learnt the teacher's policy in the decoded domain and did not
carry it to the real frames it plays on; one that agrees on neither did not learn it from the code.

    python benchmarks/autoencoder_teacher.py --dataset URI --teacher DIR [--autoencoder DIR [--student DIR]] \
        --out DIR
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from polydistill import config as C
from polydistill.agents import load_agent
from polydistill.autoencoder import (
    changed_mask,
    code_bytes,
    evaluate_reconstruction,
    load_autoencoder,
    reconstruct,
    train_autoencoder,
)
from polydistill.buffer import open_dataset
from polydistill.networks import ConvAutoencoder, QNetwork
from polydistill.sampling import iter_split
from polydistill.teacher import load_teacher

BRIGHT = 0.2  # pixel level ([0, 1]) above which a pixel of the original is an object, not background
CROP = 28  # side in pixels of the magnified window around the newest frame's motion
DECISIVE_SHARE = 0.25
PICTURE_STATES = 6


def option_configs(profile_ae: dict, args: argparse.Namespace) -> dict[str, dict]:
    """The autoencoder settings of each option, on one budget (epochs, training states per epoch, device)."""
    budget = {"epochs": args.epochs, "max_train_states": args.train_states, "device": args.device}
    return {
        "seed": {**profile_ae, **budget, "loss": "mse", "latent_dim": 64, "code_dtype": "float32",
                 "teacher_weight": 0.0, "changed_weight": 1.0},
        "cpu, no teacher term": {**profile_ae, **budget, "teacher_weight": 0.0},
        "cpu": {**profile_ae, **budget},
    }


def teacher_q(teacher: QNetwork, x: torch.Tensor) -> torch.Tensor:
    """Q-values (B, actions) of [0, 1] float states."""
    with torch.no_grad():
        return teacher.heads[0](teacher.torso(x))


def object_recall(orig: torch.Tensor, recon: torch.Tensor) -> tuple[int, int]:
    """(kept, total) moving bright pixels of the newest frame (see the module docstring)."""
    moving = changed_mask((orig * 255).round().to(torch.uint8))[:, -1] & (orig[:, -1] > BRIGHT)
    kept = (recon[:, -1] >= 0.5 * orig[:, -1]) & moving
    return int(kept.sum()), int(moving.sum())


def measure(model: ConvAutoencoder, dtype: str, val: list[np.ndarray], teacher: QNetwork) -> dict:
    """The table's columns for one trained option, plus per-state actions and gaps for the picture."""
    base = evaluate_reconstruction(model, val, dtype, teacher)
    kept = total = 0
    same, gaps, acts, acts_r = [], [], [], []
    for b in val:
        x = torch.from_numpy(b).float().div(255.0)
        r = reconstruct(model, b, dtype)
        k, t = object_recall(x, r)
        kept, total = kept + k, total + t
        q, qr = teacher_q(teacher, x), teacher_q(teacher, r)
        top2 = q.topk(2, dim=1).values
        gaps.append((top2[:, 0] - top2[:, 1]).numpy())
        acts.append(q.argmax(1).numpy())
        acts_r.append(qr.argmax(1).numpy())
        same.append(acts[-1] == acts_r[-1])
    gap, agree = np.concatenate(gaps), np.concatenate(same)
    decisive = gap >= np.quantile(gap, 1.0 - DECISIVE_SHARE)
    return {
        **base,
        "object_recall": kept / total if total else float("nan"),
        "agreement_decisive": float(agree[decisive].mean()),
        "gap": gap,
        "actions": np.concatenate(acts),
        "actions_recon": np.concatenate(acts_r),
    }


def student_gap(student, game: str, states: np.ndarray, ae: tuple[ConvAutoencoder, str, int], teacher_m: dict,
                gap: np.ndarray) -> None:
    """Print the student's agreement with the teacher's action on originals and on reconstructions."""
    model, dtype, _ = ae
    teacher_acts = teacher_m["actions"]
    decisive = gap >= np.quantile(gap, 1.0 - DECISIVE_SHARE)
    for where in ("originals", "reconstructions"):
        acts = []
        for i in range(0, len(states), 256):
            b = states[i:i + 256]
            x = b if where == "originals" else (reconstruct(model, b, dtype) * 255).round().to(torch.uint8).numpy()
            acts.append(student.q_values(x, game).argmax(1).cpu().numpy())
        same = np.concatenate(acts) == teacher_acts
        print(f"latent student on held-out {where}: agrees with the teacher's action on {100 * same.mean():.1f} % "
              f"(decisive quarter {100 * same[decisive].mean():.1f} %)")


def motion_window(state: np.ndarray) -> tuple[int, int]:
    """Top-left corner of the CROP x CROP window centred on the newest frame's changed pixels (or the centre)."""
    moving = changed_mask(torch.from_numpy(state[None]))[0, -1].numpy()
    ys, xs = np.nonzero(moving)
    size = state.shape[-1]
    cy, cx = (int(ys.mean()), int(xs.mean())) if len(ys) else (size // 2, size // 2)
    clamp = lambda c: int(np.clip(c - CROP // 2, 0, size - CROP))  # noqa: E731
    return clamp(cy), clamp(cx)


def picture(path: Path, game: str, states: np.ndarray, recons: dict[str, np.ndarray],
            results: dict[str, dict], picks: np.ndarray, meanings: list[str]) -> Path:
    """Rows: decisive held-out states; columns: the original's newest frame and each option's, whole and
    magnified around the motion, titled with the teacher's action on it."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    names = ["original", *recons]
    fig, axes = plt.subplots(len(picks), 2 * len(names), figsize=(2.0 * 2 * len(names), 2.2 * len(picks)),
                             squeeze=False)
    first = next(iter(results.values()))
    for r, i in enumerate(picks):
        y, x = motion_window(states[i])
        for c, name in enumerate(names):
            frame = states[i][-1] / 255.0 if name == "original" else recons[name][r][-1]
            if name == "original":
                act, mark = first["actions"][i], ""
            else:
                act = results[name]["actions_recon"][i]
                mark = " (same)" if act == first["actions"][i] else " (differs)"
            for k, img in enumerate((frame, frame[y:y + CROP, x:x + CROP])):
                ax = axes[r][2 * c + k]
                ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_title(f"{name}\n{meanings[act]}{mark}", fontsize=7)
                else:
                    ax.set_title("x3 around the motion", fontsize=7)
    fig.suptitle(f"{game}: the teacher's action on originals and reconstructions (decisive held-out states)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, help="the game's frame dataset URI (export-buffer's)")
    ap.add_argument("--teacher", required=True, help="the teacher run that computed the dataset's Q-values")
    ap.add_argument("--autoencoder", default=None, help="reuse this trained cpu autoencoder (a run's)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per option (default: the cpu profile's)")
    ap.add_argument("--train-states", type=int, default=None, help="training states per epoch (cpu's)")
    ap.add_argument("--val-states", type=int, default=2_048, help="held-out states measured")
    ap.add_argument("--student", default=None, help="a latent student distilled through --autoencoder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True, help="working directory: trained options and the picture")
    args = ap.parse_args()
    os.environ.setdefault("POLYDISTILL_PROGRESS", "off")
    profile_ae = C.resolve("autoencoder", "cpu").model_dump(mode="json")
    args.epochs = args.epochs or profile_ae["epochs"]
    args.train_states = args.train_states or profile_ae["max_train_states"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    src = open_dataset(args.dataset)
    teacher, _ = load_teacher(args.teacher, "cpu")
    teacher.eval()
    meanings = load_agent(args.teacher).action_meanings(src.game)
    val = [b.states for b in iter_split(src, "holdout", profile_ae["holdout_fraction"], 256,
                                         limit=args.val_states)]
    print(f"{src.game}: {src.manifest.num_valid_states} states, {sum(len(v) for v in val)} held out measured; "
          f"torch threads {torch.get_num_threads()}; budget {args.epochs} epochs x {args.train_states} states")

    results: dict[str, dict] = {}
    models: dict[str, tuple[ConvAutoencoder, str, int]] = {}
    trained: dict[str, tuple[Path, str]] = {}
    for name, settings in option_configs(profile_ae, args).items():
        cfg = C.from_dict("autoencoder", settings)
        t0 = time.perf_counter()
        where = train_autoencoder(args.dataset, cfg, out / name.replace(", ", "-").replace(" ", "-"),
                                  teacher=args.teacher if cfg.teacher_weight > 0 else None).out_dir
        trained[name] = (where, f"trained in {time.perf_counter() - t0:.0f} s")
    if args.autoencoder:
        trained["cpu, the run's"] = (Path(args.autoencoder), "trained by the run")
    for name, (where, note) in trained.items():
        model, meta = load_autoencoder(where, "cpu")
        dtype = meta["code_dtype"]
        models[name] = (model, dtype, code_bytes(model.latent_dim, dtype))
        results[name] = measure(model, dtype, val, teacher)
        print(f"{name}: {note} ({where})")

    print()
    cols = ("option", "B/state", "PSNR dB", "changed MSE", "object recall", "agreement",
            "agreement, decisive", "feature error")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(cols))) + "|")
    for name, m in results.items():
        print(f"| {name} | {models[name][2]} | {m['psnr']:.2f} | {m['changed_mse']:.5f} | "
              f"{100 * m['object_recall']:.1f} % | {100 * m['teacher_agreement']:.1f} % | "
              f"{100 * m['agreement_decisive']:.1f} % | {m['teacher_feature_error']:.3f} |")

    states = np.concatenate(val)
    gap = results["seed"]["gap"]
    if args.student and args.autoencoder:
        student_gap(load_agent(args.student), src.game, states, models["cpu, the run's"], results["seed"], gap)
    picks = np.argsort(-gap, kind="stable")[: 4 * PICTURE_STATES][::4][:PICTURE_STATES]
    recons = {n: reconstruct(m, states[picks], d).numpy() for n, (m, d, _) in models.items()}
    path = picture(out / f"teacher-view-{src.game}.png", src.game, states, recons, results, picks, meanings)
    print(f"\npicture: {path}")


if __name__ == "__main__":
    main()
