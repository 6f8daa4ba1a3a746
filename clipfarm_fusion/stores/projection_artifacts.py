"""Projection artifacts where they are stored, a local path or an s3:// URI: loaded for a run or a
`migrate-schema`, and made by `clipfarm-fusion make-projection`. The math is `projection`'s.

An artifact is written once and never replaced: its sha256 is the `projection_id` locked in schema.json,
so overwriting one would change the vectors behind a lock that still names it.
"""

from __future__ import annotations

import hashlib

from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.core.projection import Projection, build, parse
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.read import tables
from clipfarm_fusion.read.vectors import read_vectors
from clipfarm_fusion.stores import s3io, schema_lock


def load(client, location: str, strategies: dict) -> Projection:
    """The artifact at `location`, parsed; ConfigError saying how to make one when there is none."""
    body = s3io.read_uri(client, location)
    if body is None:
        raise ConfigError(
            f"projection artifact {location} not found; build one with clipfarm-fusion make-projection"
        )
    return parse(body, location, strategies)


def make(
    client, bucket: str, root: str, *, kind: str, dim: int, seed: int, base: str, out: str, sample_size: int
) -> tuple[str, int, int]:
    """`clipfarm-fusion make-projection`: build an artifact for `base`'s locked vectors and write it once.

    Returns (projection_id, input_dim, output_dim). Input width comes from the base strategy's
    schema.json (without its mask); PCA reads a sample of its fused vectors back from the shards.
    """
    layout = Layout(root)
    lock = schema_lock.read(client, bucket, layout.schema_key(base))
    if lock is None:
        raise ConfigError(f"no s3://{bucket}/{layout.schema_key(base)}: run --strategy {base} first")
    input_dim = lock.fused_dim - int(lock.mask_appended)
    sample = None
    if kind == "pca":
        table = tables.manifest_table(client, bucket, root, base)
        ids = [] if table is None else sorted(set(table["video_id"].to_pylist()))[:sample_size]
        if ids:
            _, vectors, _ = read_vectors(base, ids, bucket=bucket, root=root, client=client)
            sample = vectors[:, :input_dim]
    body = build(kind, dim, sample, input_dim, base, seed)
    _write_once(client, out, body)
    return hashlib.sha256(body).hexdigest(), input_dim, dim


def _write_once(client, out: str, body: bytes) -> None:
    """Write `body` to a new local path or s3:// key; ConfigError when something is already there."""
    if out.startswith("s3://"):
        out_bucket, key = s3io.parse_s3_uri(out)
        written = s3io.put_if_absent(client, out_bucket, key, body) is not None
    else:
        try:
            with open(out, "xb") as handle:
                handle.write(body)
            written = True
        except FileExistsError:
            written = False
    if not written:
        raise ConfigError(f"{out} already exists; artifacts are never overwritten: choose a new --out")
