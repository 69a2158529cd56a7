"""``polydistill export-buffer`` and ``polydistill buffer-info``."""

from __future__ import annotations

import json

import click

from ..config import ExportConfig
from . import main
from .options import config_options


@main.command("export-buffer")
@click.option(
    "--teacher-dir",
    "teacher_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Teacher run directory: its dataset/ is exported and its network computes the Q-values.",
)
@click.option("--dataset", "dataset", default=None, help="Export this dataset instead of the teacher run's.")
@click.option("--to", "dest", required=True, help="Destination: s3://bucket/prefix, file:///path or a path.")
@click.option("--create-bucket", is_flag=True, help="Create the S3 bucket if it does not exist.")
@config_options("export")
def export_buffer_cmd(
    teacher_dir: str | None, dataset: str | None, dest: str, create_bucket: bool, cfg: ExportConfig, profile: str
) -> None:
    """Upload a teacher's recorded experience as a versioned, checksummed, sharded dataset.

    S3 endpoint and credentials come from MINIO_ENDPOINT (or AWS_ENDPOINT_URL), AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY.
    """
    from ..export import export_buffer

    source = dataset or teacher_dir
    if source is None:
        raise click.UsageError("give --teacher-dir DIR (a train-teacher run) or --dataset URI")
    m = export_buffer(source, dest, teacher_dir, cfg, create_bucket=create_bucket)
    click.echo(
        f"{dest}: {m.game}, {m.num_steps} steps in {len(m.shards)} shards, codec {m.codec}, "
        f"{m.bytes_per_state:.1f} bytes/state"
    )


@main.command("buffer-info")
@click.argument("uri")
@click.option("--verify", is_flag=True, help="Download every shard and check its sha256.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def buffer_info_cmd(uri: str, verify: bool, as_json: bool) -> None:
    """Describe the dataset at URI: steps, episodes, shards, codec, bytes per state, compression ratios."""
    from ..export import buffer_info

    info = buffer_info(uri, verify=verify)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    lines = [
        f"dataset         {info['uri']}",
        f"game            {info['game']} ({info['num_actions']} actions)",
        f"codec           {info['codec']} {info['codec_params'] or ''}",
        f"steps           {info['steps']} ({info['valid_states']} sampleable states, "
        f"{info['episodes']} episodes)",
        f"shards          {info['shards']} ({info['total_bytes'] / 1e6:.2f} MB)",
        f"bytes/state     {info['bytes_per_state']} "
        f"({info['ratio_vs_raw_stacks']}x smaller than raw 4-frame stacks)",
        f"q-values        {info['q_values']['dtype'] if info['q_values'] else 'none'}",
    ]
    if "lossless_bytes_per_state" in info:
        lines.append(
            f"lossless codec  {info['lossless_bytes_per_state']} bytes/state "
            f"({info['ratio_vs_lossless']}x of it)"
        )
    if verify:
        lines.append("checksums       " + ("all verify" if info["checksums_ok"] else "FAILED"))
        lines += [f"  {p}" for p in info["problems"]]
    click.echo("\n".join(lines))
    if verify and not info["checksums_ok"]:
        raise SystemExit(1)
