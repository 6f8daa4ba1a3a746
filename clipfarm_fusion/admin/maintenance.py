"""Upkeep of the lake tables, and the single-file manifest snapshot.

Every daily commit adds a small file to a table; `maintain` compacts them into files of about
`lake.TARGET_FILE_BYTES`, writes a checkpoint (so opening a table reads one file, not every commit), and
vacuums files no version inside the retention window needs (old versions' files and files a crashed
commit left behind). Compaction changes no row and is not a conflict for a concurrent run; vacuum only
removes files that no version younger than the retention references, so time travel works inside it.

`snapshot_manifest` writes the current manifest as one dated parquet file (O(corpus) by nature) for
users and tools that read a single file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.read import vectors
from clipfarm_fusion.stores import lake, manifest, s3io

log = logging.getLogger(__name__)
DEFAULT_RETENTION = timedelta(days=7)


@dataclass(frozen=True)
class TableUpkeep:
    """What `maintain` did to one table."""

    location: str
    version: int
    files_added: int
    files_removed: int
    vacuumed: int

    def line(self) -> str:
        return (
            f"{self.location}: version {self.version}, compacted {self.files_removed} files into "
            f"{self.files_added}, vacuumed {self.vacuumed} unreferenced files"
        )


def maintain(
    client,
    bucket: str,
    root: str,
    strategy: str,
    retention: timedelta = DEFAULT_RETENTION,
    dry_run: bool = False,
) -> list[TableUpkeep]:
    """Compact, checkpoint and vacuum the strategy's manifest and state tables (those that exist)."""
    layout = Layout(root.strip("/"))
    options = lake.storage_options(client)
    done = []
    for key in (layout.manifest_table_key(strategy), layout.state_table_key(strategy)):
        location = lake.uri(bucket, key)
        table = lake.open_table(location, options)
        if table is None:
            continue
        added = removed = 0
        if not dry_run:
            metrics = table.optimize.compact(
                target_size=lake.TARGET_FILE_BYTES, writer_properties=lake.WRITER
            )
            added, removed = int(metrics["numFilesAdded"]), int(metrics["numFilesRemoved"])
            table.create_checkpoint()
        vacuumed = table.vacuum(
            retention_hours=math.ceil(retention.total_seconds() / 3600),  # whole hours: round up, keep more
            dry_run=dry_run,
            enforce_retention_duration=False,
        )
        upkeep = TableUpkeep(location, table.version(), added, removed, len(vacuumed))
        log.info(upkeep.line())
        done.append(upkeep)
    return done


def snapshot_manifest(
    client, bucket: str, root: str, strategy: str, out: str | None = None
) -> tuple[str, int]:
    """Write the strategy's current manifest as one parquet file: `out` (a path or s3:// URI), by default
    a dated file under `<root>/fused/<strategy>/snapshots/`, whose name says when it was taken (never
    the seed-era `fused_manifest.parquet` path, where it would go stale unseen; `gc` keeps the shards a
    snapshot in the bucket points at). Returns (where, rows)."""
    table = vectors.load_manifest(client, bucket, root, strategy)  # ConfigError when nothing is published
    body = manifest.encode(table)
    if out is None:
        taken = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = (
            f"s3://{bucket}/{Layout(root.strip('/')).snapshot_prefix(strategy)}fused_manifest-{taken}.parquet"
        )
    if out.startswith("s3://"):
        out_bucket, key = s3io.parse_s3_uri(out)
        client.put_object(Bucket=out_bucket, Key=key, Body=body)
    else:
        path = Path(out)
        scratch = path.with_name(path.name + ".partial")
        scratch.write_bytes(body)
        scratch.replace(path)
    return out, table.num_rows
