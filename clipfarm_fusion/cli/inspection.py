"""What `clipfarm-fusion inspect` prints: the schema lock, the manifest's totals (by status, lock and
date), per requested id its pointer, vector stats and lineage, and with --failed the failed or waiting
items with their errors."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from clipfarm_fusion.errors import SchemaDriftError, StoreError
from clipfarm_fusion.read.vectors import iter_shards, select_rows
from clipfarm_fusion.stores import schema_lock

_DATE = r"date=(?P<date>\d{4}-\d{2}-\d{2})/"


def describe_lock(client, bucket: str, key: str) -> str:
    """Every field the lock sets (whatever options it has grown), and how many locks it replaced."""
    try:
        lock = schema_lock.read(client, bucket, key)
    except (SchemaDriftError, StoreError) as exc:  # an unparsable lock is a finding
        return f"schema lock: unreadable: {exc}"
    if lock is None:
        return f"schema lock: none at s3://{bucket}/{key}"
    fields = " ".join(
        f"{name}={value}" for name, value in asdict(lock).items() if name != "history" and value is not None
    )
    return (
        f"schema lock s3://{bucket}/{key}: lock_id={lock.lock_id} {fields}; "
        f"history: {len(lock.history)} earlier lock(s)"
    )


def manifest_totals(table: pa.Table) -> list[str]:
    """Row and video counts, then rows by fusion_status and rows, shards and widths by shard date."""
    lines = [f"  {table.num_rows} rows, {pc.count_distinct(table['video_id']).as_py()} videos"]
    by_status = table.group_by("fusion_status").aggregate([([], "count_all")]).sort_by("fusion_status")
    lines.append("  by fusion_status:")
    lines += [f"    {row['fusion_status']:<28} {row['count_all']:>8}" for row in by_status.to_pylist()]
    dates = pc.struct_field(pc.extract_regex(table["fused_key"], _DATE), "date")
    by_date = (
        pa.table({"date": dates, "fused_key": table["fused_key"], "fused_dim": table["fused_dim"]})
        .group_by("date")
        .aggregate([([], "count_all"), ("fused_key", "count_distinct"), ("fused_dim", "distinct")])
        .sort_by("date")
    )
    if "lock_id" in table.column_names:
        locks = pc.value_counts(pc.fill_null(table["lock_id"], "(before lineage)")).to_pylist()
        lines.append("  by lock_id:")
        lines += [f"    {entry['values']:<28} {entry['counts']:>8}" for entry in locks]
    lines.append("  by date:")
    lines += [
        f"    {row['date']}  {row['count_all']:>8} rows  {row['fused_key_count_distinct']:>5} shards  "
        f"fused_dim {sorted(row['fused_dim_distinct'])}"
        for row in by_date.to_pylist()
    ]
    return lines


def describe_ids(client, bucket: str, table: pa.Table, video_ids: list[str]) -> list[str]:
    """One line per requested id, in request order: its latest row's pointer and vector stats."""
    selection = select_rows(table, video_ids)
    requested = table.filter(pc.is_in(table["video_id"], value_set=pa.array(video_ids, pa.string())))
    rows_per_id = {
        item["values"]: item["counts"] for item in pc.value_counts(requested["video_id"]).to_pylist()
    }
    found: dict[str, str] = {}
    for shard in iter_shards(client, bucket, selection.rows, threads=8):
        vectors = shard.vectors.astype(np.float64)
        stats = zip(
            np.linalg.norm(vectors, axis=1), vectors.min(1), vectors.max(1), vectors.mean(1), strict=True
        )
        for row, (norm, low, high, mean) in zip(shard.rows.to_pylist(), stats, strict=True):
            total = rows_per_id[row["video_id"]]
            found[row["video_id"]] = (
                f"  {row['video_id']}  {row['fused_key']}#{row['shard_idx']}  {row['fusion_status']}  "
                f"source_hash {row['source_hash']}  dim {shard.vectors.shape[1]}  norm {norm:.6g}  "
                f"min {low:.6g}  max {high:.6g}  mean {mean:.6g}"
                + (f"  (latest of {total} rows)" if total > 1 else "")
                + _lineage(row)
            )
    return [found.get(video_id, f"  {video_id}  not in manifest") for video_id in video_ids]


def _lineage(row: dict) -> str:
    """What the row was made from: its lock and each input's ETag (and VersionId when versioned)."""
    if row.get("lock_id") is None:
        return "  lineage: not recorded (fused before lineage)"
    inputs = " ".join(
        f"{m}={row.get(f'{m}_etag') or '-'}"
        + (f"@{row[f'{m}_version_id']}" if row.get(f"{m}_version_id") else "")
        for m in ("video", "audio", "text")
    )
    return f"  lock {row['lock_id']}  etags {inputs}"


FAILURE_HEADINGS = {
    "video_id": "video_id",
    "status": "status",
    "retry_count": "retries",
    "run_date": "run_date",
}


def failures_table(rows: pd.DataFrame) -> list[str]:
    """The items of `read_failures`, one line each: the short columns aligned, then the whole error
    text (on one line); then how many there are per status."""
    if rows.empty:
        return ["  no item in a failed or waiting status"]
    cells = {
        column: [heading, *rows[column].fillna("").astype(str)]
        for column, heading in FAILURE_HEADINGS.items()
    }
    widths = {column: max(map(len, values)) for column, values in cells.items()}
    errors = ["error", *(" ".join(str(e).split()) if isinstance(e, str) else "" for e in rows["error"])]
    lines = [
        "  " + "  ".join(cells[c][i].ljust(widths[c]) for c in FAILURE_HEADINGS) + "  " + errors[i]
        for i in range(len(errors))
    ]
    counts = rows["status"].value_counts(sort=False)
    lines.append("  " + ", ".join(f"{status} {count}" for status, count in counts.items()))
    return lines
