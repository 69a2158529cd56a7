"""Buffer storage: bytes per state for raw stacks, frames stored once, and the zstd codec, on frames a
teacher played (and on random play), plus export and read MB/s against a local S3 server (moto on
127.0.0.1).

    python benchmarks/buffer_storage.py [--teacher-dir RUN] [--game Breakout] [--steps 6000]

Without --teacher-dir it trains a short teacher first (its recorded states are from a learning policy).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from polydistill import config as C
from polydistill.buffer import RAW_STACK_BYTES, ExperienceDataset
from polydistill.export import export_buffer
from polydistill.teacher import train_teacher

SEED_AE_BYTES = 64 * 4  # the seed paper's autoencoder: 64 float32 per state


def _teacher(game: str, steps: int, learn: bool, root: Path) -> Path:
    cfg = C.resolve(
        "teacher",
        "smoke",
        overrides={
            "total_steps": steps,
            "num_envs": 4,
            "buffer_size": steps,
            "record_steps": steps,
            "learning_starts": 500 if learn else steps,
            "exploration_fraction": 0.3,
            "checkpoint_every": 10**9,
        },
    )
    out = root / f"{game}-{'teacher' if learn else 'random'}"
    train_teacher(game, cfg, out)
    return out


def _moto() -> tuple[object, str]:
    from minio import Minio
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        {
            "MINIO_ENDPOINT": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench-secret",
        }
    )
    Minio(f"{host}:{port}", "bench", "bench-secret", secure=False).make_bucket("bench")
    return server, "s3://bench"


def measure(run: Path, label: str, s3: str) -> None:
    for codec in ("raw", "zstd"):
        cfg = C.resolve("export", "cpu", overrides={"codec": codec, "shard_steps": 2_000, "q_dtype": "none"})
        uri = f"{s3}/{label}-{codec}"
        t0 = time.perf_counter()
        m = export_buffer(run, uri, None, cfg)
        t_exp = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as cache:
            ds = ExperienceDataset(uri, cache_dir=cache)
            t0 = time.perf_counter()
            n = sum(len(r) for _, r in ds.iter_batches(512))
            t_read = time.perf_counter() - t0
        mb = m.total_bytes / 1e6
        frames_once = 84 * 84 + 9
        print(
            f"{label:<16} {codec:<5} states {n:>6}  bytes/state {m.bytes_per_state:>8.1f}  "
            f"vs raw stacks {RAW_STACK_BYTES / m.bytes_per_state:>6.1f}x  "
            f"vs seed AE {SEED_AE_BYTES / m.bytes_per_state:>5.2f}x  "
            f"export {mb / t_exp:>6.1f} MB/s ({n / t_exp:>7,.0f} states/s)  read+stack {n / t_read:>7,.0f} states/s"
        )
    print(
        f"{label:<16} reference: raw 4-frame stack {RAW_STACK_BYTES} B/state, frames once {frames_once} B/state, "
        f"seed autoencoder {SEED_AE_BYTES} B/state"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher-dir", type=Path, default=None)
    ap.add_argument("--game", default="Breakout")
    ap.add_argument("--steps", type=int, default=6_000)
    a = ap.parse_args()
    server, s3 = _moto()
    try:
        with tempfile.TemporaryDirectory() as d:
            runs = {
                "teacher-played": a.teacher_dir or _teacher(a.game, a.steps, True, Path(d)),
                "random-play": _teacher(a.game, a.steps, False, Path(d)),
            }
            for label, run in runs.items():
                measure(run, f"{a.game}/{label}", s3)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
