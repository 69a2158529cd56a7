"""``polydistill train-autoencoder`` and ``polydistill encode-buffer``."""

from __future__ import annotations

import click

from ..config import AutoencoderConfig, EncodeConfig
from . import main
from .options import config_options


@main.command("train-autoencoder")
@click.option("--dataset", required=True, help="Frame dataset: s3://bucket/prefix, file:///path or a path.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option(
    "--teacher",
    "teacher_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="The game's teacher (run or checkpoint directory): adds teacher agreement on reconstructions to the "
    "metrics; needed by --teacher-weight > 0.",
)
@config_options("autoencoder")
def train_autoencoder_cmd(
    dataset: str, out_dir: str, teacher_dir: str | None, cfg: AutoencoderConfig, profile: str
) -> None:
    """Train a per-game autoencoder on a dataset's states and measure its reconstructions.

    Writes checkpoint/, history.csv, loss.png and reconstructions.png into --out. Re-running with the same
    --out resumes an interrupted run (or extends it when --epochs grew); a finished run is reused.
    """
    from ..autoencoder import train_autoencoder

    res = train_autoencoder(dataset, cfg, out_dir, teacher=teacher_dir)
    m = res.metrics
    agreement = f"teacher agreement {m['teacher_agreement']:.3f}, " if "teacher_agreement" in m else ""
    click.echo(
        f"{res.out_dir}: {res.epochs} epochs, {res.steps} steps; held-out mse {m['mse']:.5f}, "
        f"psnr {m['psnr']:.2f} dB, changed-pixel mse {m['changed_mse']:.5f}, {agreement}"
        f"{m['bytes_per_state']:.0f} bytes/state ({cfg.code_dtype} codes)\n"
        f"  checkpoint {res.checkpoint_dir}\n  grid       {res.grid_png}\n  history    {res.history_csv}"
    )


@main.command("encode-buffer")
@click.option(
    "--dataset", required=True, help="Frame dataset to encode: s3://bucket/prefix, file:///path or a path."
)
@click.option(
    "--autoencoder",
    "autoencoder_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="train-autoencoder run directory (or its checkpoint/) for the same game.",
)
@click.option(
    "--teacher",
    "teacher_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="The game's teacher (run or checkpoint directory): its Q-values on the original frames are stored.",
)
@click.option("--to", "dest", required=True, help="Destination: s3://bucket/prefix, file:///path or a path.")
@click.option("--create-bucket", is_flag=True, help="Create the S3 bucket if it does not exist.")
@config_options("encode")
def encode_buffer_cmd(
    dataset: str, autoencoder_dir: str, teacher_dir: str, dest: str, create_bucket: bool, cfg: EncodeConfig,
    profile: str,
) -> None:
    """Encode a frame dataset into a latent dataset (codec 'latent') with the teacher's Q-values.

    The destination holds the codes, the teacher's Q-values computed on the original frames, and the
    autoencoder that decodes the codes (under autoencoder/, its sha256 in the manifest).
    """
    from ..encode import encode_buffer

    m = encode_buffer(dataset, autoencoder_dir, teacher_dir, dest, cfg, create_bucket=create_bucket)
    lossless = m.source.get("source_bytes_per_state")
    click.echo(
        f"{dest}: {m.game}, {m.num_valid_states} states in {len(m.shards)} shards, "
        f"{m.source['latent_dim']} {m.source['code_dtype']} codes, {m.bytes_per_state:.1f} bytes/state "
        f"with Q-values and step columns (source {lossless} bytes/state)"
    )
