"""RunSummary: what a run did, per strategy. One type rendered three ways: log table, JSON, Dagster metadata."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clipfarm_fusion.core.policy import FUSED_STATUSES


@dataclass
class StrategySummary:
    """One strategy's run. `delta` counts every horizon video that needs work (the work-list rules (docs/contract.md), unsafe ids
    included); each of them ends in exactly one place: a status count, `upgrade_checked` (a placeholder
    whose text is still missing) or `deferred` (left for the next run by --max-items). So
    `delta == sum(counts) + upgrade_checked + deferred`, in the log, the table, the JSON and Dagster."""

    delta: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    fused_dim: int | None = None
    shards_written: list[str] = field(default_factory=list)
    manifest_added: int = 0
    manifest_updated: int = 0
    upgrade_checked: int = 0
    deferred: int = 0
    manifest_key: str = ""
    schema_key: str = ""
    state_key: str = ""
    state_source: str = ""
    seconds: float = 0.0
    # A run behind a later one (see `delta`): the newest run_date committed before it, and how many
    # videos it left to that run because it holds them in a newer form or already retried them.
    behind: str | None = None
    left_to_later: int = 0
    # Re-fusion requests (`stores.refusals`): videos of this delta that are there because a request
    # names them, per reason (`refuse`, `changed_upstream`), and the videos the open requests still
    # named when the run planned (those of this delta included).
    requested: dict[str, int] = field(default_factory=dict)
    requests_pending: int = 0

    def record(
        self, statuses: list[str], video_ids: list[str], errors: dict[str, str], sample_size: int
    ) -> None:
        """Count a batch's outcomes; keep up to `sample_size` ids per status and the errors of the samples."""
        for status, count in Counter(statuses).items():
            self.counts[status] = self.counts.get(status, 0) + count
        for video_id, status in zip(video_ids, statuses, strict=True):
            sample = self.samples.setdefault(status, [])
            if len(sample) < sample_size:
                sample.append(video_id)
                if video_id in errors:
                    self.errors[video_id] = errors[video_id]

    def merge(self, part: StrategySummary, sample_size: int) -> None:
        """Add a later part of the same run (a chunk's, in video_id order): counts add up, samples fill
        up in order, so the sum of the parts is what one pass over the day records."""
        for status, count in part.counts.items():
            self.counts[status] = self.counts.get(status, 0) + count
        for status, ids in part.samples.items():
            sample = self.samples.setdefault(status, [])
            for video_id in ids[: max(sample_size - len(sample), 0)]:
                sample.append(video_id)
                if video_id in part.errors:
                    self.errors[video_id] = part.errors[video_id]
        self.shards_written += part.shards_written
        self.upgrade_checked += part.upgrade_checked
        self.fused_dim = part.fused_dim or self.fused_dim

    @property
    def fused(self) -> int:
        return sum(self.counts.get(s, 0) for s in FUSED_STATUSES)


@dataclass
class RunSummary:
    run_date: str
    bucket: str
    root: str
    strategies: dict[str, StrategySummary] = field(default_factory=dict)
    text_state: str = "available"
    text_files_listed: int | None = None  # a full text recheck (--recheck-text): text files found by LIST
    seconds: float = 0.0
    stopped: dict[str, str] = field(default_factory=dict)  # strategy -> why it stopped, nothing published
    conflicts: dict[str, str] = field(default_factory=dict)  # strategy -> the concurrent run it yielded to
    unparseable_dates: int = 0  # horizon rows whose captured_at is not ISO 8601 (counted as undated)
    unparseable_date_samples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    def items_per_second(self) -> float:
        fused = max((s.fused for s in self.strategies.values()), default=0)
        return fused / self.seconds if self.seconds > 0 else 0.0

    def to_table(self) -> str:
        """A plain-text table for the end of every run: one column per strategy."""
        names = list(self.strategies)
        statuses = sorted({status for s in self.strategies.values() for status in s.counts})
        rows: list[tuple[str, list[str]]] = [("delta", [str(self.strategies[n].delta) for n in names])]
        rows += [
            (status, [str(self.strategies[n].counts.get(status, 0)) for n in names]) for status in statuses
        ]
        rows += [
            ("placeholder_unchanged", [str(self.strategies[n].upgrade_checked) for n in names]),
            ("deferred", [str(self.strategies[n].deferred) for n in names]),
        ]
        if any(self.strategies[n].behind for n in names):
            rows += [
                ("behind_newest_run", [self.strategies[n].behind or "-" for n in names]),
                ("left_to_later_run", [str(self.strategies[n].left_to_later) for n in names]),
            ]
        if any(self.strategies[n].requests_pending for n in names):
            rows += [
                (f"requested_{reason}", [str(self.strategies[n].requested.get(reason, 0)) for n in names])
                for reason in sorted({r for n in names for r in self.strategies[n].requested})
            ]
            rows.append(("requests_pending", [str(self.strategies[n].requests_pending) for n in names]))
        rows += [
            ("fused_dim", [str(self.strategies[n].fused_dim or "-") for n in names]),
            ("shards_written", [str(len(self.strategies[n].shards_written)) for n in names]),
            ("manifest_added", [str(self.strategies[n].manifest_added) for n in names]),
            ("manifest_updated", [str(self.strategies[n].manifest_updated) for n in names]),
            ("seconds", [f"{self.strategies[n].seconds:.2f}" for n in names]),
        ]
        width = max(len(label) for label, _ in rows)
        cols = [max(len(n), *(len(v[i]) for _, v in rows)) for i, n in enumerate(names)]
        lines = [
            f"run_date={self.run_date} bucket={self.bucket} root={self.root} text_state={self.text_state}"
            + ("" if self.text_files_listed is None else f" text_files_listed={self.text_files_listed}"),
            *(
                [f"captured_at not ISO 8601, counted as undated: {self.unparseable_dates}"]
                if self.unparseable_dates
                else []
            ),
            "  ".join([" " * width, *(n.rjust(c) for n, c in zip(names, cols, strict=True))]),
        ]
        lines += [
            "  ".join([label.ljust(width), *(v.rjust(c) for v, c in zip(values, cols, strict=True))])
            for label, values in rows
        ]
        lines.append(f"total {self.seconds:.2f}s, {self.items_per_second():.0f} fused items/s")
        lines += [f"STOPPED {name}: {why}" for name, why in self.stopped.items()]
        lines += [f"CONFLICT {name}: {why}" for name, why in self.conflicts.items()]
        return "\n".join(lines)
