"""A backfill through a real `dagster-daemon` stops at the first day whose blocking checks fail.

Days 1 and 2 were fused before (from the CLI), then one of day 2's shards was lost. A backfill of days
1..3 of `concat`, launched as the UI launches one (the `launchPartitionBackfill` mutation, on a real
`dagster-webserver`) on the deployment's instance (infra/dagster.yaml, in the tests' Postgres), runs day 1, fails day 2 on `manifest_pointers_resolve` and never starts day 3.
The pointer sample is 0, so each day's check reads only its own day's shards: day 1 cannot see day 2's
loss. The daemon's backfill loop ticks every 30 s, and day 3 could only start on the third tick, so the
test takes a minute and a half.
"""

import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.run import pipeline
from clipfarm_fusion.stores import s3io

from .test_dagster_webserver import graphql, running_webserver, wait_until_up

DAYS = ("2026-03-01", "2026-03-02", "2026-03-03")
BACKFILL_SECONDS = 300
LAUNCH = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
STATUS = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill {
      status
      assetBackfillData { assetBackfillStatuses { ... on AssetPartitionsStatusCounts {
        numPartitionsTargeted numPartitionsMaterialized numPartitionsFailed numPartitionsInProgress
      } } }
    }
  }
}
"""


def partition_of(tags: dict[str, str]) -> str:
    return tags.get("dagster/partition") or tags["dagster/asset_partition_range_start"]


@pytest.fixture
def production_webserver(s3_endpoint, postgres_dagster_home):
    """The webserver on the deployment's instance: infra/dagster.yaml, runs and events in Postgres."""
    with running_webserver(postgres_dagster_home) as served:
        yield served


def test_a_backfill_stops_at_the_day_whose_blocking_check_fails(production_webserver, seed_day, client):
    url, home, process = production_webserver
    seeded = seed_day(videos=8, run_date=date.fromisoformat(DAYS[0]), mix={"full": 1.0})
    for prefix, day in zip("bc", DAYS[1:], strict=True):
        made = synthetic.make_day(
            8, run_date=date.fromisoformat(day), prefix=prefix, mix={"full": 1.0}, older_captures=False
        )
        synthetic.add_day(client, seeded.bucket, seeded.root, *made, threads=8)
    for day in DAYS[:2]:
        pipeline.run(
            seeded.config(strategies=("concat",), shard_size=4), date.fromisoformat(day), client=client
        )

    def shards(day: str) -> list[str]:
        prefix = Layout(seeded.root).shard_prefix("concat", date.fromisoformat(day))
        return s3io.list_keys(client, seeded.bucket, prefix)

    lost = shards(DAYS[1])[0]
    client.delete_object(Bucket=seeded.bucket, Key=lost)

    fusion = {
        "bucket": seeded.bucket,
        "state_dir": str(seeded.state_dir),
        "shard_size": 4,
        "pointer_sample_size": 0,
    }
    params = {
        "assetSelection": [{"path": ["concat"]}],
        "partitionNames": list(DAYS),
        "runConfigData": {"resources": {"fusion": {"config": fusion}}},
    }
    wait_until_up(url, process)
    launched = graphql(url, LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    # Started after the launch, so its first backfill tick already sees the backfill.
    daemon = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-daemon"),
            "run",
            "-m",
            "clipfarm_fusion.defs.definitions",
        ],
        env=os.environ | {"DAGSTER_HOME": str(home), "CLIPFARM_EXECUTOR": "in_process"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            while instance.get_backfill(backfill_id).status.value == "REQUESTED":
                assert daemon.poll() is None, "dagster-daemon exited"
                assert time.monotonic() - started < BACKFILL_SECONDS, "the backfill did not finish"
                time.sleep(1)
            runs = instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": backfill_id}))
            by_day = {partition_of(run.tags): run for run in runs}
            materialized = instance.get_materialized_partitions(AssetKey("concat"))
            evaluations = [
                event.dagster_event.asset_check_evaluation_data
                for event in instance.all_logs(
                    by_day[DAYS[1]].run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
                )
            ]
    finally:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()

    assert sorted(by_day) == list(DAYS[:2]), "day 3 must never get a run"
    assert by_day[DAYS[0]].status == DagsterRunStatus.SUCCESS
    assert by_day[DAYS[1]].status == DagsterRunStatus.FAILURE
    assert materialized == {DAYS[0]}
    [failed] = [e for e in evaluations if not e.passed]
    assert failed.check_name == "manifest_pointers_resolve" and lost in failed.description
    backfill = graphql(url, STATUS, {"id": backfill_id})["partitionBackfillOrError"]
    assert backfill["status"] == "COMPLETED_FAILED"
    assert backfill["assetBackfillData"]["assetBackfillStatuses"] == [
        {
            "numPartitionsTargeted": 3,
            "numPartitionsMaterialized": 1,
            "numPartitionsFailed": 2,  # day 2, and day 3 behind it
            "numPartitionsInProgress": 0,
        }
    ]
    assert shards(DAYS[2]) == []  # nothing of day 3 was fused
