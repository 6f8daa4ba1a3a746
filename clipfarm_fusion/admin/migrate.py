"""`clipfarm-fusion migrate-schema`: the one deliberate way to change a strategy's schema lock.

A daily run never changes `schema.json`; when an upstream model changes its output size the run stops
with exit code 3. This accepts the new dims: it probes them from a sample of the current embeddings
(or takes them from flags), and replaces the lock with `If-Match` on the version it read. The old lock
goes into the new one's `history`. Existing manifest rows and shards are left as they are: each row
keeps its own `fused_dim`, so vectors fused under the old lock stay readable and are told apart by it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from clipfarm_fusion.core import drift
from clipfarm_fusion.core.kernels import STRATEGIES, FusionOptions
from clipfarm_fusion.core.layout import MODALITIES, Layout
from clipfarm_fusion.core.npy import decode_vector
from clipfarm_fusion.errors import ConfigError, ItemError
from clipfarm_fusion.read import tables
from clipfarm_fusion.stores import projection_artifacts, s3io, schema_lock
from clipfarm_fusion.stores.schema_lock import SchemaLock


@dataclass(frozen=True)
class Migration:
    old: SchemaLock
    new: SchemaLock
    manifest_rows_kept: int  # rows fused under an earlier lock, each still readable with its own fused_dim

    @property
    def changed(self) -> bool:
        return (self.old.dims, self.old.options) != (self.new.dims, self.new.options)


def probe_dims(client, bucket: str, layout: Layout, sample: int) -> dict[str, int | None]:
    """The most common dim of up to `sample` current embeddings per modality: one LIST and `sample` GETs."""
    dims: dict[str, int | None] = {}
    for modality in MODALITIES:
        listing = client.list_objects_v2(
            Bucket=bucket, Prefix=layout.embedding_prefix(modality), MaxKeys=sample
        )
        keys = [item["Key"] for item in listing.get("Contents", [])]
        found = []
        for key, fetched in s3io.get_many(client, bucket, keys, threads=8).items():
            if isinstance(fetched, s3io.Fetched) and fetched.body is not None:
                try:
                    found.append(decode_vector(fetched.body, key, modality).shape[0])
                except ItemError:
                    continue
        dims[modality] = drift.majority(dict(Counter(found)))
    return dims


def migrate(
    client,
    bucket: str,
    root: str,
    strategy: str,
    *,
    dims: dict[str, int | None],
    mask: bool | None = None,
    l2_normalize: bool | None = None,
    weights: tuple[float, float, float] | None = None,
    projection_uri: str | None = None,
    sample: int = 32,
    dry_run: bool = False,
) -> Migration:
    """Replace the lock of `strategy` with the given (or probed) dims; returns what changed.

    Strategy `projection` needs the artifact to lock (`projection_uri`): the lock keeps only its sha256,
    and its width is part of fused_dim. Giving a new artifact is how a new projection version is accepted.
    """
    layout = Layout(root)
    artifact = None
    if strategy == "projection":
        if not projection_uri:
            raise ConfigError(
                "migrate-schema --strategy projection needs the artifact to lock: pass --projection PATH|s3://B/KEY"
            )
        artifact = projection_artifacts.load(client, projection_uri, STRATEGIES)
    elif projection_uri:
        raise ConfigError(f"--projection is only for strategy projection, not {strategy}")
    key = layout.schema_key(strategy)
    fetched = s3io.get_object(client, bucket, key)
    if fetched.body is None:
        raise ConfigError(f"s3://{bucket}/{key} does not exist: nothing to migrate; the next run creates it")
    old = schema_lock.parse(fetched.body, f"s3://{bucket}/{key}")
    if any(dims.get(m) is None for m in MODALITIES):
        probed = probe_dims(client, bucket, layout, sample)
        dims = {m: dims.get(m) or probed[m] for m in MODALITIES}
    missing = [m for m in MODALITIES if not dims[m]]
    if missing:
        raise ConfigError(
            f"no decodable {', '.join(missing)} embeddings found to probe; pass --{missing[0]}-dim"
        )
    previous = {**{k: v for k, v in asdict(old).items() if k != "history"}, "replaced_at": _now()}
    new = replace(
        SchemaLock.build(
            strategy,
            (dims["video"], dims["audio"], dims["text"]),
            FusionOptions(
                mask=old.mask_appended if mask is None else mask,
                l2_normalize=old.l2_normalized if l2_normalize is None else l2_normalize,
                weights=weights or old.weights or FusionOptions().weights,
                projection=artifact,
            ),
        ),
        history=(*old.history, previous),
    )
    table = tables.manifest_table(client, bucket, layout.root, strategy)
    migration = Migration(old, new, 0 if table is None else table.num_rows)
    if migration.changed and not dry_run:
        s3io.put_replacing(client, bucket, key, new.to_json(), fetched.etag)
    return migration


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def describe(migration: Migration, key: str, dry_run: bool) -> str:
    old, new = migration.old, migration.new
    if not migration.changed:
        return f"{key} already locks dims {old.dims} with {_options(old)}; nothing to do"
    verb = "would change" if dry_run else "changed"
    return (
        f"{key} {verb}: dims {old.dims} -> {new.dims}, {_options(old)} -> {_options(new)}, "
        f"fused_dim {old.fused_dim} -> {new.fused_dim}.\n"
        f"{migration.manifest_rows_kept} manifest rows are fused under an older lock (lock_id "
        f"{old.lock_id}; the new one is {new.lock_id}); they stay readable with read_vectors(lock=...), and "
        "a default read returns only the new lock's rows. The old lock is kept in the new one's history.\n"
        f"To replace them: clipfarm-fusion refuse --strategy {old.fusion_strategy} --all"
        + ("" if dry_run else " (fans out like a day; run it again to continue after a kill)")
    )


def _options(lock: SchemaLock) -> str:
    weights = "" if lock.weights is None else f", weights={list(lock.weights)}"
    artifact = "" if lock.projection_id is None else f", projection_id={lock.projection_id[:12]}"
    return f"mask={lock.mask_appended}, l2={lock.l2_normalized}{weights}{artifact}"
