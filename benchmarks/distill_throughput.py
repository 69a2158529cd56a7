"""Distillation throughput: training states per second for the full, subset and latent sources, and the
latent/full time ratio (the seed paper found latents slower because every batch is decoded; target <= 1.2x).

    python benchmarks/distill_throughput.py [--work DIR] [--games Breakout,Pong] [--steps 40] [--rounds 2]
        [--batch-size 32] [--width 1.0] [--torch-threads N] [--device cpu] [--teacher-run DIR ...]
    python benchmarks/distill_throughput.py --codecs zstd,zstd-long:100000 --teacher-run DIR ... [--rounds 2]

``--codecs`` compares shard codecs instead: each teacher's buffer exported in every codec (``CODEC:STEPS``
for shards of STEPS agent steps; zstd alone in 5,000-step shards, zstd-long alone in 10,000), then
distillation on the ``cpu`` profile's settings per codec in turns, with the distiller's states/s, the whole
distill() call's wall time (dataset open and shard decoding included) and a cold sampler's states/s (open,
decode the pool, draw as many batches as the distiller's steps).

What it builds (reused from --work on a second run): a short teacher per game (or --teacher-run), its buffer
exported with the teacher's Q-values (what the pipeline's export-buffer writes), a smoke-sized autoencoder
and the latent dataset (codes + the same Q-values). Then it distills one per-game student per source with the
same settings and reports ``DistillResult.samples_per_second`` (training loop only: sampling, decoding,
targets, forward, backward, Adam; validation and checkpoints excluded), summed over games. Sources are run
in turn for --rounds rounds and the best round of each is kept, so a burst of load from other processes
does not decide the ratio. "full (teacher forward)" is the teacher's raw dataset without stored Q-values,
for reference: its targets cost a teacher forward pass per batch. A breakdown then times one batch of each
stage alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from polydistill import config as C
from polydistill.buffer import open_dataset
from polydistill.checkpoint import load_checkpoint, read_metadata
from polydistill.distill import distill
from polydistill.export import export_buffer
from polydistill.networks import DuelingQNetwork, make_adam
from polydistill.sampling import StreamingSampler
from polydistill.speed import autocast, autocast_dtype, bf16_native, describe, prepare_network
from polydistill.teacher import train_teacher


def _teacher(game: str, root: Path) -> Path:
    cfg = C.resolve("teacher", "smoke", overrides={
        "total_steps": 2_000, "num_envs": 4, "buffer_size": 2_000, "record_steps": 2_000,
        "learning_starts": 400, "exploration_fraction": 0.5, "checkpoint_every": 10**9})  # fmt: skip
    return train_teacher(game, cfg, root / "teachers" / game).out_dir


def _exported(game: str, run: Path, root: Path, codec: str = "", shard_steps: int = 1_000) -> str:
    dest = root / (f"buffers-{codec}-{shard_steps}" if codec else "buffers") / game
    if not (dest / "manifest.json").is_file():
        over = {"q_dtype": "float16", "shard_steps": shard_steps, **({"codec": codec} if codec else {})}
        t0 = time.perf_counter()
        export_buffer(run, str(dest), run, C.resolve("export", "cpu", overrides=over), device="cpu")
        print(f"export {game} ({codec or 'default codec'}, {shard_steps:,}-step shards): "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    return str(dest)


#: Shard steps per codec in the codec comparison: zstd at the cpu profile's former 5,000, zstd-long at its 10,000.
CODEC_SHARDS = {"zstd": 5_000, "zstd-long": 10_000, "raw": 5_000}


def _feed_rate(uri: str, batch: int, batches: int, pool: int) -> float:
    """States/s a cold sampler delivers: open the dataset, decode its pool of shards, draw ``batches``."""
    t0 = time.perf_counter()
    sampler = StreamingSampler(open_dataset(uri, max_decoded=pool), batch, pool_shards=pool, seed=0)
    for _ in range(batches):
        next(sampler)
    return batch * batches / (time.perf_counter() - t0)


def _warm_rate(sampler: StreamingSampler, batches: int) -> float:
    """States/s of drawing ``batches`` from a sampler whose shards are decoded (the training loop's feed)."""
    t0 = time.perf_counter()
    for _ in range(batches):
        next(sampler)
    return sampler.batch_size * batches / (time.perf_counter() - t0)


def compare_feeds(buffers: dict[str, dict[str, str]], batch: int, pool: int, rounds: int, batches: int = 100) -> None:
    """The sampler alone, codecs in turns for ``rounds`` rounds (each keeps its best): cold (open, decode the
    pool, draw ``batches``) and warm (``batches`` more from the decoded pool, what each training step draws)."""
    cold: dict[str, float] = {}
    warm: dict[str, float] = {}
    for _ in range(rounds):
        for c, uris in buffers.items():
            for u in uris.values():
                cold[c + u] = max(cold.get(c + u, 0.0), _feed_rate(u, batch, batches, pool))
                sampler = StreamingSampler(open_dataset(u, max_decoded=pool), batch, pool_shards=pool, seed=0)
                warm[c + u] = max(warm.get(c + u, 0.0), _warm_rate(sampler, batches))
    print(f"\nsampler alone, batch {batch}, {pool} cached shards, {batches} batches, best of {rounds} rounds in turns")
    base = next(iter(buffers))
    for c, uris in buffers.items():
        for g, u in uris.items():
            b = buffers[base][g]
            print(f"  {c:<16} {g:<12} cold {cold[c + u]:>9,.0f} states/s ({cold[c + u] / cold[base + b]:.3f}x {base})"
                  f"   warm {warm[c + u]:>9,.0f} states/s ({warm[c + u] / warm[base + b]:.3f}x {base})")  # fmt: skip


def compare_codecs(runs: dict[str, Path], work: Path, codecs: list[str], args: argparse.Namespace) -> None:
    """Distiller states/s (and a cold sampler's) on the same teachers' buffers in each codec, side by side:
    the codecs take turns for --rounds rounds and each keeps its best."""
    specs = {c: (c.partition(":")[0], int(c.partition(":")[2] or CODEC_SHARDS.get(c, 5_000))) for c in codecs}
    buffers = {c: {g: _exported(g, r, work, *specs[c]) for g, r in runs.items()} for c in codecs}
    cpu = C.resolve("distill", "cpu")
    compare_feeds(buffers, cpu.batch_size, cpu.cache_shards, max(args.rounds, 5))
    if args.steps == 0:
        return
    teachers = {g: str(r) for g, r in runs.items()}
    sps: dict[str, list[float]] = {c: [] for c in codecs}
    wall: dict[str, list[float]] = {c: [] for c in codecs}
    feed: dict[str, list[float]] = {c: [] for c in codecs}
    for _ in range(args.rounds):
        for c in codecs:
            cfg = C.resolve("distill", "cpu", overrides={
                "source": "full", "steps": args.steps, "eval_every": args.steps, "checkpoint_every": 10**9,
                "init": "random", "width": args.width, "device": args.device})  # fmt: skip
            out = work / "runs" / f"{c}-{time.time_ns()}"
            t0 = time.perf_counter()
            sps[c].append(distill(teachers, buffers[c], cfg, out).samples_per_second)
            wall[c].append(time.perf_counter() - t0)
            shutil.rmtree(out, ignore_errors=True)
            rates = [_feed_rate(u, cfg.batch_size, args.steps, cfg.cache_shards) for u in buffers[c].values()]
            feed[c].append(sum(rates) / len(rates))
    cached = C.resolve("distill", "cpu").cache_shards
    print(f"\n{len(runs)} games ({', '.join(runs)}), cpu profile distill settings (batch 32 per game, {cached} "
          f"cached shards), {args.steps} steps, best of {args.rounds} rounds")  # fmt: skip
    print(f"{'codec':<18}{'distill states/s':>18}{'distill() wall s':>18}{'cold sampler states/s':>24}   all rounds")
    for c in codecs:
        print(f"{c:<18}{max(sps[c]):>18.1f}{min(wall[c]):>18.1f}{max(feed[c]):>24.0f}   "
              f"{', '.join(f'{x:.1f}' for x in sps[c])}")  # fmt: skip
    base = codecs[0]
    for c in codecs[1:]:
        r = max(sps[c]) / max(sps[base])
        print(f"{c} / {base} distill states/s: {r:.3f} ({'within' if r >= 0.95 else 'outside'} 5%); cold sampler: "
              f"{max(feed[c]) / max(feed[base]):.3f}; distill() wall: {min(wall[c]) / min(wall[base]):.3f}")


def _latent(game: str, buffer: str, teacher: Path, root: Path) -> str | None:
    from polydistill.autoencoder import train_autoencoder
    from polydistill.encode import encode_buffer

    dest = root / "latents" / game
    if not (dest / "manifest.json").is_file():
        cfg = C.resolve("autoencoder", "smoke", overrides={"device": "cpu"})
        ae = train_autoencoder(buffer, cfg, root / "autoencoders" / game)
        encode_buffer(buffer, ae.out_dir, teacher, str(dest), device="cpu")
    return str(dest)


def _ms(fn, repeat: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat * 1e3


def breakdown(
    game: str, run: Path, buffer: str, latent: str | None, batch: int, width: float, device: torch.device
) -> None:
    """Milliseconds per batch of each stage of a training step, timed alone."""
    frames = StreamingSampler(open_dataset(buffer), batch, seed=0)
    rows = [("sample frames + stack (zstd shard cached)", _ms(lambda: next(frames), 20))]
    x = torch.from_numpy(next(frames).states)
    if latent is not None:
        from polydistill.encode import LatentDecoder

        lds = open_dataset(latent)
        codes = StreamingSampler(lds, batch, seed=0)
        rows.append(("sample latents", _ms(lambda: next(codes), 20)))
        dec = LatentDecoder.from_dataset(lds, "cpu")
        z = torch.from_numpy(next(codes).latents)
        rows.append(("decode latents (LatentDecoder.decode, sub-pixel last layer)", _ms(lambda: dec.decode(z), 10)))

        def plain() -> None:
            with torch.no_grad():
                dec.model.decode(z)

        rows.append(("  same with the plain ConvTranspose2d last layer", _ms(plain, 10)))
    teacher, _ = load_checkpoint(run / "checkpoint")

    def teacher_fwd() -> None:
        with torch.inference_mode():
            teacher(x)

    rows.append(("teacher forward (no stored Q)", _ms(teacher_fwd, 10)))
    student = DuelingQNetwork([teacher.num_actions[0]], width=width)
    opt = make_adam(student.parameters(), torch.device("cpu"), lr=1e-4)  # as distill builds it

    def update() -> None:
        loss = student(x).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    rows.append((f"student forward+backward+Adam (width {width})", _ms(update, 10)))
    print(f"\n{game}: one batch of {batch} states, stage by stage")
    for name, ms in rows:
        print(f"  {name:<58} {ms:8.1f} ms")
    student_formats(x.to(device), teacher.num_actions[0], width, device)


def _student_update_ms(
    x: torch.Tensor, n_actions: int, width: float, device: torch.device, amp: torch.dtype | None, cl: bool
) -> float:
    torch.manual_seed(0)
    student = prepare_network(DuelingQNetwork([n_actions], width=width).to(device), cl)
    opt = make_adam(student.parameters(), device, lr=1e-4)
    targets = torch.zeros(len(x), n_actions, device=device)

    def update() -> None:
        with autocast(device, amp):
            q = student(x)
        loss = torch.nn.functional.mse_loss(q.float(), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return _ms(update, 10 if amp is None or bf16_native(device) else 2)


def student_formats(x: torch.Tensor, n_actions: int, width: float, device: torch.device, rounds: int = 3) -> None:
    """States/s of one student update (forward, loss against fixed targets, backward, Adam) per number
    format and layout, the same arithmetic distill runs per batch; formats take turns for ``rounds`` rounds
    and each keeps its best, so a burst of load does not decide the ratio."""
    print(f"\nstudent update per format ({len(x)} states, width {width}, on {device}, best of {rounds} rounds)")
    formats = (("fp32", "fp32", False), ("channels-last", "fp32", True), ("bf16", "bf16", False))
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, precision, cl in formats:
            ms = _student_update_ms(x, n_actions, width, device, autocast_dtype(precision, device), cl)
            best[name] = min(best.get(name, float("inf")), ms)
    for name, precision, cl in formats:
        amp = autocast_dtype(precision, device)
        rate, ratio = len(x) / best[name] * 1e3, best["fp32"] / best[name]
        print(f"  {describe(device, amp, cl, False):<52} {rate:9.0f} states/s  ({ratio:4.2f}x fp32)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="Directory for teachers, buffers, latents (reused).")
    ap.add_argument("--games", default="Breakout,Pong", help="Comma-separated games.")
    ap.add_argument("--teacher-run", action="append", default=[], help="Finished teacher run dir (repeatable).")
    ap.add_argument("--steps", type=int, default=40, help="Optimizer steps per source and round.")
    ap.add_argument("--rounds", type=int, default=2, help="Rounds over all sources; the best is kept.")
    ap.add_argument("--batch-size", type=int, default=32, help="States per game per step.")
    ap.add_argument("--width", type=float, default=1.0, help="Student width multiplier.")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0 = default).")
    ap.add_argument("--device", default="cpu", help="Training device.")
    ap.add_argument("--codecs", default="",
                    help="Compare these shard codecs instead, CODEC[:SHARD_STEPS],... (e.g. zstd,zstd-long:100000).")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device on this machine; run with --device cpu (GPU figures: docs/PERFORMANCE.md)")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    os.environ.setdefault("POLYDISTILL_PROGRESS", "off")
    work = args.work or Path(tempfile.mkdtemp(prefix="distill-bench-"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"host: {platform.machine()}, {os.cpu_count()} cores (load {load:.1f}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {args.device}; work dir {work}"
    )

    runs = {read_metadata(Path(r) / "checkpoint")["game"]: Path(r) for r in args.teacher_run}
    t0 = time.perf_counter()
    for g in args.games.split(","):
        if g not in runs:
            runs[g] = _teacher(g, work)
    if args.codecs:
        compare_codecs(runs, work, args.codecs.split(","), args)
        print(f"\ntotal {time.perf_counter() - t0:.0f} s")
        return
    buffers = {g: _exported(g, r, work) for g, r in runs.items()}
    latents = {g: _latent(g, buffers[g], r, work) for g, r in runs.items()}
    have_latent = all(v is not None for v in latents.values())
    states = ", ".join(f"{g} {open_dataset(buffers[g]).manifest.num_valid_states} states" for g in runs)
    print(f"inputs ready in {time.perf_counter() - t0:.0f} s: {states}")

    variants: list[tuple[str, str, dict[str, str]]] = [
        ("full (stored Q)", "full", buffers),
        ("subset 0.5 (stored Q)", "subset", buffers),
    ]
    if have_latent:
        variants.append(("latent (stored Q)", "latent", latents))  # type: ignore[arg-type]
    variants.append(("full (teacher forward)", "full", {g: str(r / "dataset") for g, r in runs.items()}))
    teachers = {g: str(r) for g, r in runs.items()}
    sps: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    for _ in range(args.rounds):
        for label, source, data in variants:
            cfg = C.resolve("distill", "cpu", overrides={
                "source": source, "subset_fraction": 0.5, "steps": args.steps, "batch_size": args.batch_size,
                "width": args.width, "eval_every": args.steps, "checkpoint_every": 10**9,
                "init": "random",  # a copied teacher needs width 1; speed does not depend on the start
                "device": args.device})  # fmt: skip
            out = work / "runs" / f"{source}-{time.time_ns()}"
            sps[label].append(distill(teachers, data, cfg, out).samples_per_second)
            shutil.rmtree(out, ignore_errors=True)

    print(
        f"\n{len(runs)} games, per-game heads, KL, batch {args.batch_size} per game, {args.steps} steps, "
        f"width {args.width}, best of {args.rounds} rounds"
    )
    print(f"{'source':<26}{'samples/s':>12}{'ms/step':>10}   all rounds (samples/s)")
    best = {label: max(v) for label, v in sps.items()}
    for label, v in sps.items():
        per_step = 1e3 * args.batch_size * len(runs) / best[label]
        print(f"{label:<26}{best[label]:>12.1f}{per_step:>10.1f}   {', '.join(f'{x:.1f}' for x in v)}")
    if have_latent:
        ratio = best["full (stored Q)"] / best["latent (stored Q)"]
        verdict = "meets" if ratio <= 1.2 else "misses"
        print(f"\nlatent/full time per sample: {ratio:.2f}x ({verdict} the <= 1.2x target)")
        ratio_tf = best["full (teacher forward)"] / best["latent (stored Q)"]
        print(f"latent/full time per sample when the frame dataset has no stored Q-values: {ratio_tf:.2f}x")
    else:
        print("\nlatent source: not measured (polydistill.autoencoder missing)")
    g0 = next(iter(runs))
    breakdown(g0, runs[g0], buffers[g0], latents[g0], args.batch_size, args.width, torch.device(args.device))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
