"""Benchmark the autoencoder options against the seed's plain-MSE autoencoder on one game's dataset.

For each option it trains an autoencoder with the same budget (plain MSE @64 as in the seed paper, the
changed-pixel-weighted MSE @64, the weighted cross-entropy on logits @64 (the default), and the weighted MSE
with a larger latent @128), then evaluates every
trained model on the same held-out states with codes stored as float32, float16 and int8, and prints:

    option | bytes/state | PSNR | changed-pixel MSE | encode states/s | decode states/s

``bytes/state`` counts the code only (``latent_dim x itemsize``, + 4 bytes of scale for int8); PSNR is in dB
on [0, 1] pixels; changed-pixel MSE is the squared error on pixels that differ between adjacent frames of a
state (where Breakout's ball is). Encode/decode rates are autoencoder forward passes in batches of 256
including (de)quantisation, on the chosen device. For reference it prints the stored bytes per state of the
lossless zstd dataset, of a raw 4-frame stack, and (when a teacher is at hand) of the full latent dataset
written by ``encode_buffer`` (codes + float16 Q-values + step columns).

Without ``--dataset`` it records ``--steps`` agent steps of random play in ``--game`` through the teacher
trainer (``learning_starts >= total_steps``, so no learning, and the untrained network serves as the teacher
for the Q-values). Defaults finish in a few minutes on 2 CPU cores.

    python benchmarks/autoencoder.py                             # Breakout, 4,000 steps of random play
    python benchmarks/autoencoder.py --dataset URI --teacher DIR --epochs 10 --train-states 20000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from polydistill import config as C
from polydistill.autoencoder import (
    code_bytes,
    evaluate_reconstruction,
    load_autoencoder,
    roundtrip_codes,
    train_autoencoder,
)
from polydistill.buffer import RAW_STACK_BYTES, open_dataset
from polydistill.encode import LatentDecoder, encode_buffer
from polydistill.networks import ConvAutoencoder, pick_device
from polydistill.sampling import iter_split

OPTIONS = (  # (name, loss, latent_dim)
    ("mse@64", "mse", 64),
    ("weighted@64", "weighted", 64),
    ("weighted_bce@64", "weighted_bce", 64),
    ("weighted@128", "weighted", 128),
)
DTYPES = ("float32", "float16", "int8")


def record_random_play(game: str, steps: int, out: Path) -> Path:
    """A teacher run directory whose dataset holds ``steps`` agent steps of random play."""
    from polydistill.teacher import train_teacher

    cfg = C.resolve(
        "teacher",
        "smoke",
        overrides={
            "total_steps": steps,
            "num_envs": 4,
            "buffer_size": steps,
            "learning_starts": steps,  # random actions throughout: nothing is learned
            "record_steps": steps,
            "checkpoint_every": steps,
            "device": "cpu",
        },
    )
    return train_teacher(game, cfg, out).out_dir


def throughput(
    model: ConvAutoencoder, states: list[np.ndarray], dtype: str, device: torch.device
) -> tuple[float, float]:
    """(encode, decode) states/s over ``states`` batches, (de)quantisation through ``dtype`` included."""
    codes = []
    n = sum(len(s) for s in states)
    with torch.no_grad():
        model.encode(torch.from_numpy(states[0][:8]).to(device))  # warm-up
        t0 = time.perf_counter()
        for s in states:
            codes.append(roundtrip_codes(model.encode(torch.from_numpy(s).to(device)), dtype))
        if device.type == "cuda":
            torch.cuda.synchronize()
        enc = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for z in codes:
            model.decode(z)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dec = n / (time.perf_counter() - t0)
    return enc, dec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--game", default="Breakout", help="game for random play (without --dataset)")
    ap.add_argument("--steps", type=int, default=4_000, help="agent steps of random play to record")
    ap.add_argument("--dataset", default=None, help="reuse this frame dataset URI instead of recording")
    ap.add_argument("--teacher", default=None, help="teacher dir for the encode_buffer run (with --dataset)")
    ap.add_argument("--epochs", type=int, default=3, help="autoencoder epochs per option")
    ap.add_argument("--train-states", type=int, default=2_000, help="training states per epoch")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--changed-weight", type=float, default=20.0)
    ap.add_argument("--holdout-fraction", type=float, default=0.1)
    ap.add_argument("--val-states", type=int, default=1_024, help="held-out states evaluated")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    args = ap.parse_args()
    os.environ.setdefault("POLYDISTILL_PROGRESS", "off")

    work = Path(args.work or tempfile.mkdtemp(prefix="polydistill-bench-ae-"))
    device = pick_device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, work dir {work}")
    teacher = Path(args.teacher) if args.teacher else None
    if args.dataset:
        uri = args.dataset
    else:
        t0 = time.perf_counter()
        teacher = record_random_play(args.game, args.steps, work / "random-play")
        uri = str(teacher / "dataset")
        print(f"recorded {args.steps} steps of random {args.game} in {time.perf_counter() - t0:.1f} s")
    src = open_dataset(uri)
    m = src.manifest
    print(
        f"dataset {src.uri}: {m.game}, {m.num_valid_states} states, "
        f"{m.codec} {m.bytes_per_state:.1f} bytes/state"
    )
    val = [b.states for b in iter_split(src, "holdout", args.holdout_fraction, 256, limit=args.val_states)]
    print(f"held-out states evaluated: {sum(len(v) for v in val)}")

    rows = []
    trained: dict[str, Path] = {}
    for name, loss, dim in OPTIONS:
        cfg = C.resolve(
            "autoencoder",
            "smoke",
            overrides={
                "epochs": args.epochs,
                "max_train_states": args.train_states,
                "batch_size": args.batch_size,
                "loss": loss,
                "latent_dim": dim,
                "changed_weight": args.changed_weight,
                "holdout_fraction": args.holdout_fraction,
                "code_dtype": "float32",
                "device": str(device),
            },
        )
        t0 = time.perf_counter()
        res = train_autoencoder(uri, cfg, work / f"ae-{name}", max_val_states=args.val_states)
        print(f"trained {name}: {res.steps} steps of {args.batch_size} in {time.perf_counter() - t0:.1f} s")
        trained[name] = res.out_dir
        model, _ = load_autoencoder(res.out_dir, device)
        for dtype in DTYPES:
            q = evaluate_reconstruction(model, val, dtype)
            enc, dec = throughput(model, val, dtype, device)
            rows.append(
                (f"{name} {dtype}", code_bytes(dim, dtype), q["psnr"], q["changed_mse"], q["mse"], enc, dec)
            )

    print()
    header = (
        "option",
        "bytes/state",
        "PSNR dB",
        "changed-pixel MSE",
        "MSE",
        "encode states/s",
        "decode states/s",
    )
    widths = (22, 12, 8, 18, 9, 16, 16)
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        cells = (r[0], f"{r[1]}", f"{r[2]:.2f}", f"{r[3]:.5f}", f"{r[4]:.5f}", f"{r[5]:.0f}", f"{r[6]:.0f}")
        print(" | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    print()
    print(
        f"reference: raw uint8 4-frame stack {RAW_STACK_BYTES} bytes/state; lossless {m.codec} dataset "
        f"{m.bytes_per_state:.1f} bytes/state (frames stored once per step, with step columns)"
    )
    if teacher is not None:
        dest = work / "latent-weighted_bce@64-float16"
        t0 = time.perf_counter()
        lm = encode_buffer(
            uri, trained["weighted_bce@64"], teacher, str(dest), code_dtype="float16", device=str(device)
        )
        secs = time.perf_counter() - t0
        ds = open_dataset(str(dest))
        decoder = LatentDecoder.from_dataset(ds, device)
        z = np.concatenate(
            [ds.shard(i).latents[ds.shard(i).valid_index] for i in range(len(ds.manifest.shards))]
        )
        t0 = time.perf_counter()
        decoder.decode(z)
        dec = len(z) / (time.perf_counter() - t0)
        print(
            f"encode_buffer weighted_bce@64 float16: {lm.num_valid_states / secs:.0f} states/s end to end "
            f"(stacking, encoder, teacher Q); latent dataset {lm.bytes_per_state:.1f} bytes/state with "
            f"float16 Q-values and step columns; LatentDecoder {dec:.0f} states/s"
        )


if __name__ == "__main__":
    main()
