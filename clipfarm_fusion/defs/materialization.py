"""What a fused asset's materialization shows: one strategy's share of the run summary, as metadata.

`commit` attaches it to each strategy's materialization; the UI plots the counts across partitions.
"""

from __future__ import annotations

from dagster import MetadataValue

from clipfarm_fusion.core import policy
from clipfarm_fusion.read.failures import FAILED_OR_WAITING
from clipfarm_fusion.run.summary import RunSummary, StrategySummary

STATUSES: tuple[str, ...] = (
    policy.SUCCESS_FULL,
    policy.SUCCESS_PLACEHOLDER,
    policy.MISSING_REQUIRED,
    policy.MISSING_TEXT_UNAVAILABLE,
    policy.MISSING_TEXT_PENDING,
    policy.FAIL,
    policy.FAIL_TERMINAL,
    policy.INVALID_VIDEO_ID,
)
BAR_WIDTH = 30


def strategy_metadata(summary: RunSummary, name: str) -> dict[str, MetadataValue]:
    """the run summary (docs/contract.md) as materialization metadata: every status gets a `status/<s>` count (zeros too, so the
    UI can plot each status across partitions), plus sizes, keys, timings and two markdown tables."""
    strategy = summary.strategies[name]
    uri = f"s3://{summary.bucket}/"
    metadata: dict[str, MetadataValue] = {
        f"status/{status}": MetadataValue.int(strategy.counts.get(status, 0))
        for status in _statuses(strategy)
    }
    metadata.update(
        {
            "run_date": MetadataValue.text(summary.run_date),
            "delta": MetadataValue.int(strategy.delta),
            "deferred": MetadataValue.int(strategy.deferred),
            # re-fusion (`refuse`, `detect-changes`): this day's share of the open requests, and all they name
            **{f"requested/{reason}": MetadataValue.int(n) for reason, n in strategy.requested.items()},
            "requests_pending": MetadataValue.int(strategy.requests_pending),
            "unparseable_dates": MetadataValue.int(summary.unparseable_dates),
            "fused": MetadataValue.int(strategy.fused),
            "manifest_rows_added": MetadataValue.int(strategy.manifest_added),
            "manifest_rows_updated": MetadataValue.int(strategy.manifest_updated),
            "shards_written": MetadataValue.int(len(strategy.shards_written)),
            "shard_keys": MetadataValue.json([uri + key for key in strategy.shards_written]),
            "seconds": MetadataValue.float(strategy.seconds),
            "items_per_second": MetadataValue.float(
                round(strategy.fused / strategy.seconds, 1) if strategy.seconds else 0.0
            ),
            "status_chart": MetadataValue.md(status_chart(strategy)),
            "samples": MetadataValue.md(samples_table(strategy)),
            "failed_or_waiting": MetadataValue.md(failures_note(summary, name)),
            "manifest": MetadataValue.path(uri + strategy.manifest_key),
            "schema_lock": MetadataValue.path(uri + strategy.schema_key),
            "state_table": MetadataValue.path(uri + strategy.state_key),
            "state_source": MetadataValue.text(strategy.state_source),
            "text_state": MetadataValue.text(summary.text_state),
        }
    )
    if strategy.fused_dim is not None:
        metadata["fused_dim"] = MetadataValue.int(strategy.fused_dim)
    return metadata


def _statuses(strategy: StrategySummary) -> list[str]:
    """Known statuses in contract order, then any other status the run reported."""
    return [*STATUSES, *sorted(set(strategy.counts) - set(STATUSES))]


def status_chart(strategy: StrategySummary) -> str:
    """Counts per status as a markdown table of text bars, scaled to the largest count."""
    largest = max(strategy.counts.values(), default=0)
    lines = ["| status | count | share |", "|---|---:|---|"]
    for status in _statuses(strategy):
        count = strategy.counts.get(status, 0)
        bar = "█" * (round(BAR_WIDTH * count / largest) if largest else 0)
        lines.append(f"| {status} | {count} | `{bar or '·'}` |")
    return "\n".join(lines)


def samples_table(strategy: StrategySummary) -> str:
    """Sample video_ids per status with their error text, one row per id."""
    lines = ["| status | video_id | error |", "|---|---|---|"]
    for status in _statuses(strategy):
        for video_id in strategy.samples.get(status, []):
            error = strategy.errors.get(video_id, "")
            lines.append(f"| {status} | `{_cell(video_id)}` | {_cell(error)} |")
    return "\n".join(lines) if len(lines) > 2 else "no items in this day's delta"


def failures_note(summary: RunSummary, name: str) -> str:
    """How many of the day's items failed or wait, and where every one of them is listed with its
    error: the samples above keep `sample_size` per status, the state table keeps them all."""
    strategy = summary.strategies[name]
    counts = {status: strategy.counts.get(status, 0) for status in FAILED_OR_WAITING}
    total = sum(counts.values())
    if not total:
        return "No item of this day failed or waits."
    listed = ", ".join(f"{status} {count}" for status, count in counts.items() if count)
    command = (
        f"clipfarm-fusion inspect --strategy {name} --bucket {summary.bucket} --root {summary.root} "
        f"--date {summary.run_date} --failed"
    )
    return (
        f"{total} items of this day failed or wait ({listed}). The state table "
        f"`s3://{summary.bucket}/{strategy.state_key}` holds every one with its error; list them with\n\n"
        f"`{command}` (add `--csv` for CSV)\n\nor in Python "
        f"`read_failures({name!r}, {summary.run_date!r}, bucket={summary.bucket!r})`."
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
