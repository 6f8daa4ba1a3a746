"""The export file formats: manifest rows with their vectors as one parquet file (a row group per
shard) or one structured `.npy` (memory-mapped, filled shard by shard), so memory holds one shard at a
time whatever the export size."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipfarm_fusion.read.vectors import ShardRead


def vector_field(width: int) -> pa.Field:
    return pa.field("vector", pa.list_(pa.float32(), width))


def write_parquet(path: Path, rows: pa.Table, width: int, shard_reads: Iterable[ShardRead]) -> None:
    """Manifest columns + `vector`; one row group per shard, so the writer holds one shard at a time."""
    field = vector_field(width)
    with pq.ParquetWriter(path, rows.schema.append(field), compression="zstd") as writer:
        for shard in shard_reads:
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(shard.vectors.reshape(-1)), width)
            writer.write_table(shard.rows.append_column(field, vectors))


def npy_dtype(rows: pa.Table, width: int) -> np.dtype:
    """Structured dtype: manifest columns (strings as unicode wide enough for the longest value in
    `rows`, integers as themselves), then `vector (F,) float32`. No object fields, so no pickle."""
    fields: list[tuple] = []
    for field in rows.schema:
        if pa.types.is_string(field.type):
            longest = pc.max(pc.utf8_length(rows[field.name])).as_py() or 0
            fields.append((field.name, f"<U{max(longest, 1)}"))
        else:
            fields.append((field.name, field.type.to_pandas_dtype()))
    fields.append(("vector", "<f4", (width,)))
    return np.dtype(fields)


def write_npy(path: Path, rows: pa.Table, width: int, shard_reads: Iterable[ShardRead]) -> None:
    """Fill a memory-mapped `.npy` of `rows.num_rows` records shard by shard."""
    records = np.lib.format.open_memmap(path, mode="w+", dtype=npy_dtype(rows, width), shape=(rows.num_rows,))
    offset = 0
    for shard in shard_reads:
        block = records[offset : offset + shard.rows.num_rows]
        for field in rows.schema:
            column = shard.rows[field.name]
            if pa.types.is_string(field.type):
                column = column.fill_null("")
            block[field.name] = column.to_numpy(zero_copy_only=False)
        block["vector"] = shard.vectors
        offset += shard.rows.num_rows
    records.flush()
    del records


WRITERS: dict[str, Callable[[Path, pa.Table, int, Iterable[ShardRead]], None]] = {
    ".parquet": write_parquet,
    ".npy": write_npy,
}
