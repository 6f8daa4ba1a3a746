"""`schema.json`: the dims a strategy's vectors are locked to, (the drift rules of the retry and drift rules (docs/contract.md) are in `drift`).

The lock is written once, by the first run that fuses anything; after that every run must match it.
Changing it is `clipfarm-fusion migrate-schema`, never a side effect of a daily run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from clipfarm_fusion.core.kernels import STRATEGIES, FusionOptions, fused_dim
from clipfarm_fusion.errors import SchemaDriftError, StoreError
from clipfarm_fusion.stores import s3io


@dataclass(frozen=True)
class SchemaLock:
    fusion_strategy: str
    video_dim: int
    audio_dim: int
    text_dim: int
    fused_dim: int
    mask_appended: bool
    updated_at: str
    l2_normalized: bool = False  # absent in locks written before the option existed: it was off
    weights: tuple[float, float, float] | None = None  # only for strategies that use them
    projection_id: str | None = None  # sha256 of the projection artifact (strategy `projection`)
    base_strategy: str | None = None  # what the projection projects
    history: tuple[dict, ...] = ()  # earlier locks, oldest first, each with its replaced_at (migrate-schema)

    @classmethod
    def build(cls, strategy: str, dims: tuple[int, int, int], options: FusionOptions) -> SchemaLock:
        return cls(
            fusion_strategy=strategy,
            video_dim=dims[0],
            audio_dim=dims[1],
            text_dim=dims[2],
            fused_dim=fused_dim(strategy, *dims, options),
            mask_appended=options.mask,
            updated_at=datetime.now(UTC).isoformat(timespec="seconds"),
            l2_normalized=options.l2_normalize,
            weights=tuple(options.weights) if STRATEGIES[strategy].uses_weights else None,
            projection_id=options.projection.projection_id if options.projection else None,
            base_strategy=options.projection.base_strategy if options.projection else None,
        )

    @property
    def dims(self) -> tuple[int, int, int]:
        return (self.video_dim, self.audio_dim, self.text_dim)

    @property
    def options(self) -> tuple[bool, bool, tuple[float, ...] | None, str | None]:
        """What besides the dims makes two vectors comparable: mask, L2, weights, projection."""
        return (self.mask_appended, self.l2_normalized, self.weights, self.projection_id)

    @property
    def lock_id(self) -> str:
        """What the vectors fused under this lock have in common, as a short hash: the strategy, the
        dims and every option that changes a vector. Every manifest row records it, so rows fused
        before and after a `migrate-schema` (or a same-dims option change) are told apart; when it was
        written, and the history, are not part of it."""
        identity = [self.fusion_strategy, *self.dims, self.fused_dim, *self.options]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode()


def parse(body: bytes, key: str) -> SchemaLock:
    try:
        data = json.loads(body)
        optional = {"l2_normalized", "weights", "projection_id", "base_strategy", "history"}
        fields = {k: data[k] for k in SchemaLock.__dataclass_fields__ if k not in optional}
        weights = data.get("weights")
        return SchemaLock(
            **fields,
            l2_normalized=bool(data.get("l2_normalized", False)),
            weights=None if weights is None else tuple(float(w) for w in weights),
            projection_id=data.get("projection_id"),
            base_strategy=data.get("base_strategy"),
            history=tuple(data.get("history", ())),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreError(
            f"{key} is not a valid schema lock ({type(exc).__name__}: {str(exc)[:200]}); nothing was written. "
            "Restore the previous version (bucket versioning) or write it again from a good copy; "
            "`clipfarm-fusion inspect` shows what the manifest holds"
        ) from None


def read(client, bucket: str, key: str) -> SchemaLock | None:
    body = s3io.get_object(client, bucket, key).body
    return None if body is None else parse(body, f"s3://{bucket}/{key}")


def write_if_absent(client, bucket: str, key: str, lock: SchemaLock) -> SchemaLock:
    """Create the lock; if another run created it first, theirs stands and ours must match it."""
    if s3io.put_if_absent(client, bucket, key, lock.to_json()) is None:
        existing = read(client, bucket, key)
        if existing is not None and (existing.dims, existing.options) != (lock.dims, lock.options):
            raise SchemaDriftError(
                f"{key} was created concurrently with dims {existing.dims} and options {existing.options}, "
                f"this run has {lock.dims} and {lock.options}"
            )
        return existing or lock
    return lock


def check_options(lock: SchemaLock | None, strategy: str, options: FusionOptions, key: str) -> None:
    """The run's mask, L2 and weights must be the locked ones: vectors fused otherwise would not compare."""
    if lock is None:
        return
    wanted = SchemaLock.build(strategy, lock.dims, options).options
    if lock.options != wanted:
        names = ("mask_appended", "l2_normalized", "weights", "projection_id")
        differences = ", ".join(
            f"{name} locked {old} but this run has {new}"
            for name, old, new in zip(names, lock.options, wanted, strict=True)
            if old != new
        )
        raise SchemaDriftError(
            f"{key}: {differences}; run with the locked settings, or change them deliberately with "
            f"clipfarm-fusion migrate-schema --strategy {strategy}"
        )
