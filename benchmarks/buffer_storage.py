"""Buffer storage: lossless frame codecs side by side on the same real teacher frames, per game, then the
whole dataset (frames + Q-values + columns) exported with today's ``zstd`` and with the winner.

    python benchmarks/buffer_storage.py --teachers DIR [--games DemonAttack,UpNDown,...] [--candidates all]
        [--work DIR]

``DIR/GAME`` are finished ``train-teacher`` runs (their ``dataset/`` holds the frames the teacher met, their
``checkpoint/`` gives the Q-values); without ``--teachers`` a short teacher is trained per game first.

Per game it prints, for every candidate on the same frames (frames only, split into shards of the
candidate's size): bytes per frame, encode and decode MB/s (of raw frame bytes, one thread). Then both
full exports (``export_buffer`` with the teacher's float16 Q-values, the ``cpu`` profile's settings): bytes
per state with its split into frames / Q-values / step columns / npz overhead, export seconds, and the
reader's states/s (decode every shard and stack every state, as the distiller's sampler does). Last, the
winner: the smallest bytes/state among the candidates whose decode keeps up with today's codec.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from polydistill import config as C
from polydistill.buffer import ExperienceDataset
from polydistill.codecs import window_log
from polydistill.export import export_buffer

Enc = Callable[[np.ndarray], bytes]
Dec = Callable[[bytes, int], np.ndarray]
FRAME = (84, 84)
# Keeping up: a 10,000-step shard (70.6 MB) decodes in under a second, against a distiller that trains on a
# few hundred states/s; a 100,000-step buffer (706 MB) exports in under 12 minutes on one loaded core.
MIN_DECODE_MBS = 100.0
MIN_ENCODE_MBS = 1.0


def _zstd_pair(level: int, long: bool, window_log: int = 27) -> tuple[Enc, Dec]:
    import zstandard as zs

    params = zs.ZstdCompressionParameters.from_level(level, enable_ldm=long, window_log=window_log if long else 0)
    enc = zs.ZstdCompressor(compression_params=params)
    dec = zs.ZstdDecompressor(max_window_size=1 << max(window_log, 27))

    def encode(frames: np.ndarray) -> bytes:
        return bytes(enc.compress(frames.tobytes()))

    def decode(blob: bytes, n: int) -> np.ndarray:
        return np.frombuffer(dec.decompress(blob, max_output_size=n * 7056), np.uint8).reshape(n, *FRAME)

    return encode, decode


def _xz_pair(preset: int, dict_log: int = 27) -> tuple[Enc, Dec]:
    import lzma

    # LZMA2 with a dictionary as large as the shard, so matches reach as far as zstd-long's. Its encoder needs
    # about 11x the dictionary in memory (1.4 GB at 2^27), so shards stay small.
    filters = [{"id": lzma.FILTER_LZMA2, "preset": preset | lzma.PRESET_EXTREME, "dict_size": 1 << dict_log}]

    def encode(frames: np.ndarray) -> bytes:
        return lzma.compress(frames.tobytes(), format=lzma.FORMAT_RAW, filters=filters)

    def decode(blob: bytes, n: int) -> np.ndarray:
        return np.frombuffer(lzma.decompress(blob, format=lzma.FORMAT_RAW, filters=filters), np.uint8).reshape(
            n, *FRAME)

    return encode, decode


def _pixel_major(pair: tuple[Enc, Dec]) -> tuple[Enc, Dec]:
    """``pair`` on the frames transposed so that each pixel's values over time are contiguous."""
    enc, dec = pair

    def encode(frames: np.ndarray) -> bytes:
        return enc(np.ascontiguousarray(frames.reshape(len(frames), -1).T).reshape(frames.shape))

    def decode(blob: bytes, n: int) -> np.ndarray:
        return np.ascontiguousarray(dec(blob, n).reshape(-1, n).T).reshape(n, *FRAME)

    return encode, decode


def _blosc2_pair(level: int, filt: str) -> tuple[Enc, Dec]:
    import blosc2

    # typesize 84 (one frame row): the shuffle/bitshuffle filters then group bytes across rows.
    kw = {"codec": blosc2.Codec.ZSTD, "clevel": level, "typesize": 84, "nthreads": 1,
          "filters": [getattr(blosc2.Filter, filt)], "filters_meta": [0]}  # fmt: skip

    def encode(frames: np.ndarray) -> bytes:
        return bytes(blosc2.compress2(frames.tobytes(), **kw))

    def decode(blob: bytes, n: int) -> np.ndarray:
        return np.frombuffer(blosc2.decompress2(blob), np.uint8).reshape(n, *FRAME)

    return encode, decode


def _jxl_pair() -> tuple[Enc, Dec]:
    import imagecodecs

    def encode(frames: np.ndarray) -> bytes:  # one lossless JPEG XL image per frame, length-prefixed
        parts = [imagecodecs.jpegxl_encode(f, lossless=True, effort=7) for f in frames]
        return b"".join(len(p).to_bytes(4, "little") + p for p in parts)

    def decode(blob: bytes, n: int) -> np.ndarray:
        out, at = np.empty((n, *FRAME), np.uint8), 0
        for i in range(n):
            size = int.from_bytes(blob[at : at + 4], "little")
            out[i] = imagecodecs.jpegxl_decode(blob[at + 4 : at + 4 + size])
            at += 4 + size
        return out

    return encode, decode


def candidates(which: str) -> dict[str, tuple[int, Callable[[], tuple[Enc, Dec]]]]:
    """name -> (shard steps, codec factory). ``which``: ``quick`` (today's, and zstd-long at two levels),
    ``windows`` (zstd-19 long over 10k and 100k-step shards, each one window, also with the frames transposed
    pixel-major, and xz over 10k and 25k),
    ``default`` (quick, plus zstd-19 without long matching, 5k-step shards, blosc2) or ``all`` (adds the slow
    ones)."""
    out: dict[str, tuple[int, Callable[[], tuple[Enc, Dec]]]] = {
        "zstd-3, 5k shards (today's zstd)": (5_000, lambda: _zstd_pair(3, False)),
        "zstd-9 long, 10k shards": (10_000, lambda: _zstd_pair(9, True)),
        "zstd-19 long, 10k (zstd-long)": (10_000, lambda: _zstd_pair(19, True)),
    }
    if which == "windows":
        out.pop("zstd-9 long, 10k shards")
        whole = window_log(100_000 * FRAME[0] * FRAME[1])  # the codec's own window for a 100,000-step shard
        out["zstd-19 long, 100k shards"] = (100_000, functools.partial(_zstd_pair, 19, True, whole))
        out["xz -9e, 10k shards"] = (10_000, lambda: _xz_pair(9))
        out["xz -9e, 25k shards"] = (25_000, lambda: _xz_pair(9, 28))
        out["zstd-19 long, pixel-major, 100k"] = (100_000, lambda: _pixel_major(_zstd_pair(19, True, whole)))
        return out
    if which == "quick":
        return out
    out["zstd-19, 5k shards"] = (5_000, lambda: _zstd_pair(19, False))
    out["zstd-19 long, 5k shards"] = (5_000, lambda: _zstd_pair(19, True))
    try:
        import blosc2  # noqa: F401

        out["blosc2 zstd-9 bitshuffle, 10k"] = (10_000, lambda: _blosc2_pair(9, "BITSHUFFLE"))
    except ImportError:
        print("blosc2 not installed: its candidate is skipped (pip install blosc2)")
    if which == "all":
        out["zstd-22 long, 10k shards"] = (10_000, lambda: _zstd_pair(22, True))
        try:
            import imagecodecs  # noqa: F401

            out["JPEG XL lossless per frame"] = (10_000, _jxl_pair)
        except ImportError:
            print("imagecodecs not installed: JPEG XL is skipped (pip install imagecodecs)")
    return out


def all_rows(uri: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every step's frame and columns of a dataset, in step order (context rows dropped)."""
    ds = ExperienceDataset(uri, max_decoded=1)
    frames, cols = [], []
    for sh in ds.iter_shards():
        assert sh.frames is not None
        c = sh.info.context
        frames.append(sh.frames[c:])
        cols.append({k: v[c:] for k, v in sh.arrays.items() if k != "frames"})
    return np.concatenate(frames), {k: np.concatenate([c[k] for c in cols]) for k in cols[0]}


def measure_candidates(
    frames: np.ndarray, cands: dict[str, tuple[int, Callable[[], tuple[Enc, Dec]]]], rounds: int = 3
) -> dict[str, dict[str, float]]:
    """Bytes per frame and encode/decode MB/s of every candidate over ``frames`` cut into its shards. Each
    encodes once; then all decode in turns for ``rounds`` rounds, each keeping its best, so a burst of load
    from other processes does not decide the ratio."""
    mb = frames.nbytes / 1e6
    out: dict[str, dict[str, float]] = {}
    blobs: dict[str, list[tuple[bytes, int]]] = {}
    decoders: dict[str, Dec] = {}
    for name, (shard, factory) in cands.items():
        enc, decoders[name] = factory()
        t0 = time.perf_counter()
        blobs[name] = [(enc(np.ascontiguousarray(frames[s : s + shard])), len(frames[s : s + shard]))
                       for s in range(0, len(frames), shard)]  # fmt: skip
        out[name] = {"bytes": sum(len(b) for b, _ in blobs[name]) / len(frames), "enc": mb / (time.perf_counter() - t0)}
    for _ in range(rounds):
        for name, dec in decoders.items():
            t0 = time.perf_counter()
            back = [dec(b, n) for b, n in blobs[name]]
            out[name]["dec"] = max(out[name].get("dec", 0.0), mb / (time.perf_counter() - t0))
            if not np.array_equal(np.concatenate(back), frames):
                raise SystemExit(f"{name} is not lossless")
    return out


def split(uri: str) -> dict[str, float]:
    """Stored bytes per valid state of a dataset, by what they hold (npz members' compressed sizes)."""
    import zipfile

    ds = ExperienceDataset(uri, max_decoded=1)
    parts = {"frames": 0.0, "q": 0.0, "columns": 0.0}
    for info in ds.manifest.shards:
        data = (Path(ds.store.local_path() or ".") / info.name).read_bytes()
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for zi in z.infolist():
                key = zi.filename.removesuffix(".npy")
                kind = "frames" if key.startswith("frames") else "q" if key == "q" else "columns"
                parts[kind] += zi.file_size - 128  # less the npy header (128 B per member)
    n = ds.manifest.num_valid_states
    out = {k: v / n for k, v in parts.items()}
    out["overhead"] = ds.manifest.bytes_per_state - sum(out.values())
    return out


def read_rate(uri: str) -> float:
    """States/s of decoding every shard and stacking every valid state (a cold reader, as the sampler)."""
    ds = ExperienceDataset(uri, max_decoded=1)
    t0 = time.perf_counter()
    n = 0
    for sh, rows in ds.iter_batches(512):
        n += len(sh.states(rows))
    return n / (time.perf_counter() - t0)


def export(run: Path, dest: Path, codec: str, shard_steps: int) -> tuple[str, float]:
    cfg = C.resolve("export", "cpu", overrides={"codec": codec, "shard_steps": shard_steps})
    t0 = time.perf_counter()
    export_buffer(run, str(dest), run, cfg, device="cpu")
    return str(dest), time.perf_counter() - t0


def measure_game(game: str, run: Path, work: Path, which: str,
                 exports: tuple[tuple[str, int], ...] = (("zstd", 5_000), ("zstd-long", 10_000))) -> None:
    frames, _ = all_rows(str(run / "dataset"))
    print(f"\n{game}: {len(frames):,} frames of the teacher run {run} ({frames.nbytes / 1e6:.1f} MB raw)")
    if which != "none":
        results = measure_candidates(frames, candidates(which))
        for name, r in results.items():
            print(f"  {name:<34} {r['bytes']:7.1f} B/frame   encode {r['enc']:7.1f} MB/s   decode {r['dec']:7.1f} MB/s")
        fast = {k: v for k, v in results.items() if v["dec"] >= MIN_DECODE_MBS and v["enc"] >= MIN_ENCODE_MBS}
        best = min(fast, key=lambda k: fast[k]["bytes"])
        print(f"  winner (fewest bytes among those decoding >= {MIN_DECODE_MBS} MB/s and encoding >= "
              f"{MIN_ENCODE_MBS} MB/s): {best}")
    print("  whole datasets (export-buffer, float16 Q, cpu profile), bytes per state:")
    uris, secs = {}, {}
    for codec, shard in exports:
        key = f"{codec}:{shard}"
        uris[key], secs[key] = export(run, work / f"buffers-{codec}-{shard}" / game, codec, shard)
    reads: dict[str, float] = {}
    for _ in range(2):  # in turns, each keeping its best
        for c, u in uris.items():
            reads[c] = max(reads.get(c, 0.0), read_rate(u))
    bps = {}
    for key, uri in uris.items():
        ds = ExperienceDataset(uri)
        bps[key], parts = ds.manifest.bytes_per_state, split(uri)
        print(f"    {key:<16}: {bps[key]:6.1f} B/state = frames "
              f"{parts['frames']:.1f} + Q and columns {parts['q'] + parts['columns']:.1f} + npz {parts['overhead']:.1f}"
              f"; export {secs[key]:5.1f} s ({len(frames) / secs[key]:,.0f} steps/s); read+stack "
              f"{reads[key]:,.0f} states/s", flush=True)  # fmt: skip
    base = next(iter(uris))
    for key in list(uris)[1:]:
        print(f"    {key} / {base}: bytes {bps[key] / bps[base]:.2f}, export time {secs[key] / secs[base]:.2f}, "
              f"read+stack states/s {reads[key] / reads[base]:.2f}")


def _teacher(game: str, root: Path, steps: int = 10_000) -> Path:
    from polydistill.teacher import train_teacher

    cfg = C.resolve("teacher", "cpu", overrides={
        "total_steps": steps, "num_envs": 4, "buffer_size": steps, "record_steps": steps,
        "learning_starts": steps - 2_000, "train_frequency": 8, "exploration_fraction": 0.5,
        "checkpoint_every": 10**9, "device": "cpu"})  # fmt: skip
    return train_teacher(game, cfg, root / game).out_dir


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teachers", type=Path, default=None, help="Directory of teacher runs, one per game.")
    ap.add_argument("--games", default="DemonAttack,UpNDown,Atlantis,Breakout,Pong")
    ap.add_argument("--candidates", choices=("none", "quick", "windows", "default", "all"), default="default",
                    help="none: the whole exports only; quick: 3 zstd settings; windows: zstd-19 long over 10k and "
                         "100k shards, pixel-major, and xz; default: 6 candidates; all: also zstd-22 and JPEG XL.")
    ap.add_argument("--exports", default="zstd:5000,zstd-long:10000",
                    help="Whole exports to measure, CODEC:SHARD_STEPS,... (the first is the baseline of the ratios).")
    ap.add_argument("--work", type=Path, default=None,
                    help="Keep the exported buffers here (DIR/buffers-CODEC-SHARDS/GAME).")
    a = ap.parse_args()
    os.environ.setdefault("POLYDISTILL_PROGRESS", "off")
    load = os.getloadavg()[0]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, load average {load:.1f}; one thread per codec")
    with tempfile.TemporaryDirectory() as d:
        root = a.teachers or Path(d) / "teachers"
        for game in a.games.split(","):
            run = root / game
            if not (run / "checkpoint").is_dir():
                run = _teacher(game, root)
            exports = tuple((c, int(n)) for c, _, n in (item.partition(":") for item in a.exports.split(",")))
            measure_game(game, run, a.work or Path(d) / "exports", a.candidates, exports)


if __name__ == "__main__":
    main()
