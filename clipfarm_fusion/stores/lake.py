"""Delta Lake tables in the bucket, through delta-rs (`deltalake`): the one module that talks to it.

The manifest and the state are Delta tables under `<root>/`, so a daily run costs O(delta): an upsert
is one replaceWhere commit (the rows of the touched ids replaced by their new rows) that adds one small
file and rewrites only the files holding rows it replaces; a commit is one conditional PUT of a log
entry (`aws_conditional_put=etag`), atomic and safe against concurrent writers. Reads stream the
table a row group at a time (we write 64k-row groups), so memory does not follow the table's size; we
use no DataFusion scan or MERGE because those hold whole files and join in memory (about 1 GB for a
1M-row table). Any engine that reads Delta (deltalake, polars, duckdb, Spark, Trino) reads the tables.

delta-rs brings its own S3 client: its settings are derived here from our boto3 client (endpoint,
region, credentials) and from the run's S3 patience; `s3_faults.is_fault` recognises its faults and
`s3_faults.setup_problem` its refusals. Temporary credentials are never copied: delta-rs resolves and
refreshes them from the standard chain itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from botocore.credentials import RefreshableCredentials
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError as CommitFailedError  # re-exported for callers
from deltalake.exceptions import DeltaError, TableNotFoundError
from deltalake.schema import Field, PrimitiveType

from clipfarm_fusion.errors import StoreError
from clipfarm_fusion.stores import s3_faults, s3io

log = logging.getLogger(__name__)
META_PREFIX = "clipfarm."
HISTORY_LOOKBACK = 100  # commits searched for our own metadata (compactions carry none)
ROW_GROUP = 65_536  # rows per parquet row group we write, and per batch we read: bounds read memory
TARGET_FILE_BYTES = 32 * 1024 * 1024  # files we write (and compact to): an update rewrites at most this
# The most distinct ids an upsert names in one replaceWhere IN list. delta-rs 1.6 recurses over the list
# and overflows its stack (SIGSEGV) from about 25,000 values; a larger upsert is one MERGE instead.
REPLACE_MAX_IDS = 8_192
WRITER = WriterProperties(max_row_group_size=ROW_GROUP, compression="ZSTD")


def storage_options(client, patience_s: float = 60.0) -> dict[str, str]:
    """delta-rs settings for the bucket our boto3 `client` talks to: same endpoint, region and
    credentials (so `AWS_ENDPOINT_URL`, profiles and MinIO work alike), conditional PUTs for safe
    concurrent commits, and retries for as long as the run's S3 patience."""
    options = {
        "AWS_REGION": client.meta.region_name or "us-east-1",
        "aws_conditional_put": "etag",
        "max_retries": "10",
        "retry_timeout": f"{max(1, int(patience_s))}s",
        "timeout": "60s",
        "connect_timeout": "10s",
    }
    endpoint = client.meta.endpoint_url
    if endpoint and not endpoint.startswith("https://s3.") and ".amazonaws.com" not in endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    credentials = client._request_signer._credentials  # botocore keeps the resolved chain here only
    if isinstance(credentials, RefreshableCredentials):
        # Temporary credentials (a role, web identity, SSO, instance or container credentials): delta-rs
        # resolves the same standard chain itself and refreshes them as they expire, however long the
        # run; a copy would expire mid-run.
        profile = s3io.profile_of(client)
        if profile:
            options["AWS_PROFILE"] = profile
    elif credentials is not None:  # static keys never expire: the very ones boto3 uses
        frozen = credentials.get_frozen_credentials()
        options["AWS_ACCESS_KEY_ID"] = frozen.access_key
        options["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
        if frozen.token:
            options["AWS_SESSION_TOKEN"] = frozen.token
    return options


def uri(bucket: str, prefix: str) -> str:
    return f"s3://{bucket}/{prefix.strip('/')}"


def open_table(location: str, options: dict[str, str]) -> DeltaTable | None:
    """The table at `location`, or None when there is no Delta table there yet; StoreError when there is
    one but its log cannot be read (an outage is not that: it stays a fault, exit 6)."""
    try:
        return DeltaTable(location, storage_options=options)
    except TableNotFoundError:
        return None
    except (DeltaError, OSError) as exc:
        if (
            problem := s3_faults.setup_problem(exc, location.removeprefix("s3://").split("/", 1)[0])
        ) is not None:
            raise problem from None
        if s3_faults.is_fault(exc):
            raise
        raise StoreError(
            f"{location} is not a readable Delta table ({str(exc).splitlines()[0][:300]}); nothing was written. "
            "Restore its _delta_log from a bucket version"
        ) from None


def create(location: str, schema: pa.Schema, options: dict[str, str]) -> tuple[DeltaTable, bool]:
    """(the table, whether this call created it). Tables are created EMPTY: writers that race to create
    one may both be told they did (delta-rs can turn the loser's create into a later version), which is
    harmless without rows; every row then goes in through a commit that detects conflicts."""
    created = True
    try:
        write_deltalake(location, schema.empty_table(), mode="error", storage_options=options)
    except CommitFailedError:
        created = False
    except DeltaError as exc:
        if "already exists" not in str(exc):
            raise
        created = False
    if not created:
        log.info("%s was created by a concurrent writer", location)
    return DeltaTable(location, storage_options=options), created


def import_rows(location: str, rows: pa.Table, options: dict[str, str], where: str) -> DeltaTable:
    """A new table at `location` holding `rows` (imported from `where`), once: created empty, then
    filled in one commit that replaces every row (`predicate="true"`), so of two runs importing at
    once exactly one commit lands and the other finds the rows there."""
    table, _ = create(location, rows.schema, options)
    if not table.file_uris():
        try:
            write_deltalake(
                table,
                rows,
                mode="overwrite",
                predicate="true",
                writer_properties=WRITER,
                target_file_size=TARGET_FILE_BYTES,
                commit_properties=_properties({"imported_from": where}),
            )
        except CommitFailedError:
            log.info("%s was imported by a concurrent run", location)
    table.update_incremental()
    return table


def _properties(metadata: dict[str, str]) -> CommitProperties:
    return CommitProperties(custom_metadata={META_PREFIX + k: v for k, v in metadata.items()})


def sql_list(values: Iterable[str]) -> str:
    """`'a', 'b'` with quotes doubled: ids may contain `'`."""
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)


def batches(table: DeltaTable, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The table's rows, `columns` only, a row group at a time, file by file: memory stays at a row
    group whatever the table's size (DataFusion's scans and MERGE, and pyarrow's dataset scanner, hold
    far more). String columns come back as plain strings."""
    dataset = table.to_pyarrow_dataset()  # the snapshot's files (we write no deletion vectors)
    wanted = list(dataset.schema.names if columns is None else columns)
    for path in dataset.files:
        parquet = pq.ParquetFile(dataset.filesystem.open_input_file(path), pre_buffer=False)
        held = [name for name in wanted if name in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=ROW_GROUP, columns=held, use_threads=False):
            yield _plain(_widened(batch, wanted, dataset.schema))


def _widened(batch: pa.RecordBatch, wanted: list[str], schema: pa.Schema) -> pa.RecordBatch:
    """`batch` with every `wanted` column, in order: a file written before `add_columns` gave the table a
    column holds none of it, and reads as null there."""
    if batch.schema.names == wanted:
        return batch
    arrays = [
        batch.column(name)
        if name in batch.schema.names
        else pa.nulls(batch.num_rows, schema.field(name).type)
        for name in wanted
    ]
    return pa.RecordBatch.from_arrays(arrays, names=wanted)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns in order, cast to its types; a column it lacks (rows written or
    staged by an older version) comes back null."""
    for name in schema.names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
    return table.select(schema.names).cast(schema)


def add_columns(table: DeltaTable, schema: pa.Schema) -> None:
    """Give `table` the columns of `schema` it lacks (nullable; old rows read them as null): one metadata
    commit, once, when a new version adds a column to a table an older version created."""
    held = set(table.to_pyarrow_dataset().schema.names)
    missing = [field for field in schema if field.name not in held]
    if missing:
        kinds = {pa.string(): "string", pa.int64(): "long", pa.int32(): "integer", pa.int8(): "byte"}
        with contextlib.suppress(CommitFailedError):  # a concurrent run added them first
            table.alter.add_columns(
                [Field(f.name, PrimitiveType(kinds[f.type]), nullable=True) for f in missing]
            )
        table.update_incremental()
        log.info("%s: added column(s) %s", table.table_uri, ", ".join(f.name for f in missing))


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    """delta-rs hands strings out as string_view; everything downstream expects plain strings."""
    return pa.schema(
        [pa.field(f.name, pa.string()) if pa.types.is_string_view(f.type) else f for f in schema]
    )


def _plain(batch: pa.RecordBatch) -> pa.RecordBatch:
    schema = _plain_schema(batch.schema)
    return batch if schema == batch.schema else batch.cast(schema)


def select_ids(table: DeltaTable, column: str, ids: pa.Array, schema: pa.Schema) -> pa.Table:
    """The rows whose `column` is one of `ids`, `schema`'s columns, read streaming."""
    ids = pa.array(ids, pa.string()) if not isinstance(ids, pa.Array) else ids
    if len(ids) == 0:
        return schema.empty_table()
    parts = [
        batch.filter(pc.is_in(batch.column(column), value_set=ids)) for batch in batches(table, schema.names)
    ]
    return pa.Table.from_batches(parts, schema=schema) if parts else schema.empty_table()


def read_all(table: DeltaTable) -> pa.Table:
    """Every row, in the table's own schema (string columns as plain strings)."""
    parts = list(batches(table))
    return (
        pa.Table.from_batches(parts)
        if parts
        else _plain_schema(table.to_pyarrow_dataset().schema).empty_table()
    )


def in_list(column: str, values: Iterable[str]) -> str:
    """`"column" IN ('a', 'b')`: a predicate delta-rs can also check concurrent commits against."""
    return f'"{column}" IN ({sql_list(values)})'


def replace(table: DeltaTable, rows: pa.Table, predicate: str, metadata: dict[str, str]) -> None:
    """One commit that replaces every row matching `predicate` (plain column comparisons, e.g. from
    `in_list`) with `rows`: an upsert when `rows` holds the final rows of exactly the matched ones. A
    filtered delete-and-append (replaceWhere), not a MERGE: it streams instead of joining, and rewrites
    only the files holding matched rows. Raises CommitFailedError when a concurrent commit added or
    removed rows it reads; the caller decides. Only for small upserts (`is_small`): delta-rs overflows
    its stack on an IN list of about 25,000 values and kills the process."""
    write_deltalake(
        table,
        rows,
        mode="overwrite",
        predicate=predicate,
        writer_properties=WRITER,
        target_file_size=TARGET_FILE_BYTES,
        commit_properties=_properties(metadata),
    )


def is_small(ids: int) -> bool:
    """Whether an upsert of `ids` distinct ids goes through `replace` (an IN list) or `merge`."""
    return ids <= REPLACE_MAX_IDS


def merge(
    table: DeltaTable, rows: pa.Table, keys: Sequence[str], metadata: dict[str, str]
) -> tuple[int, int]:
    """One MERGE commit that upserts `rows` (one per `keys`) on `keys`: (rows inserted, rows updated).
    Its predicate is constant-size whatever the number of rows, so it is the upsert of a large day (a
    new strategy, a re-fusion): a million rows into a million take about 2.5 s and +0.55 GB
    (docs/adr/0002). It joins against every file that may hold a key, so a small day uses `replace`,
    which costs a fraction of that memory on a large table. The predicate also bounds the target to the
    source's range of the first key, so delta-rs skips every file whose statistics lie outside it: the
    commit's slices are id ranges, so each slice's MERGE reads only the files of its own range instead
    of every file the earlier slices wrote (flat time per slice instead of growing with the table).
    Raises CommitFailedError like `replace`."""
    first = keys[0]
    low, high = pc.min_max(rows[first]).values()
    on = " AND ".join(f't."{key}" = s."{key}"' for key in keys)
    if low.is_valid:
        on += f' AND t."{first}" >= {sql_list([low.as_py()])} AND t."{first}" <= {sql_list([high.as_py()])}'
    metrics = (
        table.merge(
            source=rows,
            predicate=on,
            source_alias="s",
            target_alias="t",
            writer_properties=WRITER,
            commit_properties=_properties(metadata),
        )
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute()
    )
    return int(metrics["num_target_rows_inserted"]), int(metrics["num_target_rows_updated"])


def note(table: DeltaTable, schema: pa.Schema, metadata: dict[str, str]) -> None:
    """A commit that adds no rows and carries only our `metadata` (a MERGE of nothing commits nothing)."""
    write_deltalake(table, schema.empty_table(), mode="append", commit_properties=_properties(metadata))


def commit_metadata(table: DeltaTable, keys: Sequence[str]) -> dict[str, str | None]:
    """Per key, the value of our commit metadata `key` in the newest commit that carries it (None if
    none does). A run's commit records every key it has (and `run_id`), so the newest one answers;
    compactions in between carry none, so the search widens, a commit file per entry, up to
    HISTORY_LOOKBACK, and stops at the first commit of a run: what that one lacks, no run recorded since."""
    limit = 4
    while True:
        entries = table.history(limit)
        found: dict[str, str | None] = dict.fromkeys(keys)
        for entry in entries:
            for key in keys:
                if found[key] is None and entry.get(META_PREFIX + key) is not None:
                    found[key] = str(entry[META_PREFIX + key])
            if entry.get(META_PREFIX + "run_id") is not None:
                return found
        if all(v is not None for v in found.values()) or len(entries) < limit or limit >= HISTORY_LOOKBACK:
            return found
        limit = min(limit * 5, HISTORY_LOOKBACK)


def writes_since(table: DeltaTable, version: int) -> list[tuple[str, str | None]]:
    """`(operation, run_id)` of the commits after `version` that changed data (compactions and schema
    additions do not); run_id is our commit metadata `run_id`, None for a commit without it."""
    current = table.version()
    if current <= version:
        return []
    return [
        (str(entry.get("operation")), entry.get(META_PREFIX + "run_id"))
        for entry in table.history(current - version)
        if entry.get("version", current) > version
        and entry.get("operation") not in ("OPTIMIZE", "VACUUM START", "VACUUM END", "ADD COLUMN")
    ]
