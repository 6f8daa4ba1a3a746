"""The IO manager of a day's steps: the plan, the chunk indices and the chunk results go to the run's
bucket as JSON, so no two processes that run steps of one run need a filesystem in common.

Dagster's default IO manager pickles each output under `$DAGSTER_HOME/storage`, which Celery workers on
several machines or step pods could only share through NFS or a ReadWriteMany volume. The descriptors
are small (keys and counts, never rows or vectors), so each is one JSON object next to what the stages
stage themselves: `Layout.step_output_key`, under `<root>/staging/<Dagster run id>/outputs/`. The
commit leaves them (a re-execution from a failed step reads its parent run's outputs); the staging sweep
that every plan starts with removes them once the run has been idle for a day, as any staged object.

`json_codec` writes the dataclasses from their declared fields and reads back only the types named in
`DESCRIPTORS`: nothing a step reads can make it build another class. Bucket, root and patience are
the run's `fusion` resource's, so the outputs follow the run config wherever the step runs.
"""

from __future__ import annotations

from dagster import InputContext, IOManager, MetadataValue, OutputContext, io_manager

from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.defs import json_codec
from clipfarm_fusion.errors import StoreError
from clipfarm_fusion.run import chunk, plan
from clipfarm_fusion.stores import s3_faults, s3io

STEP_OUTPUTS = "step_outputs"  # the resource key the ops' outputs name
# What the steps hand each other: the plan, a chunk's index (fan_out), a chunk's result.
DESCRIPTORS: tuple[type, ...] = (plan.Plan, int, chunk.ChunkResult)


class BucketJsonIOManager(IOManager):
    """Each step output as one JSON object in the bucket, keyed by run, step, output (and mapping key)."""

    def __init__(self, client, bucket: str, root: str, patience_s: float) -> None:
        self._client = client
        self._bucket = bucket
        self._layout = Layout(root.strip("/"))
        self._patience_s = patience_s

    def handle_output(self, context: OutputContext, obj) -> None:
        key = self._key(context)
        body = json_codec.dumps(obj, DESCRIPTORS)
        s3_faults.with_patience(
            lambda: self._client.put_object(
                Bucket=self._bucket, Key=key, Body=body, ContentType="application/json"
            ),
            f"writing s3://{self._bucket}/{key}",
            self._patience_s,
        )
        context.add_output_metadata({"path": MetadataValue.path(f"s3://{self._bucket}/{key}")})

    def load_input(self, context: InputContext):
        key = self._key(context.upstream_output)
        where = f"s3://{self._bucket}/{key}"
        fetched = s3_faults.with_patience(
            lambda: s3io.get_object(self._client, self._bucket, key), f"reading {where}", self._patience_s
        )
        if fetched.body is None:
            raise StoreError(
                f"step output {where} is missing: the staging sweep removed it (its run was idle for "
                "a day); run the day afresh instead of re-executing this run"
            )
        try:
            return json_codec.loads(fetched.body, DESCRIPTORS)
        except ValueError as exc:
            raise StoreError(
                f"step output {where} is unreadable ({exc}); a step of another version of the code "
                "wrote it? Run the day afresh"
            ) from exc

    def _key(self, context: OutputContext) -> str:
        run_id, step_key, output, *mapping_key = context.get_identifier()
        return self._layout.step_output_key(run_id, step_key, output, *mapping_key)


@io_manager(
    required_resource_keys={"fusion"},
    description="The day's step descriptors (plan, chunk indices, chunk results) as JSON in the fusion "
    "resource's bucket, under <root>/staging/<run id>/outputs/.",
)
def bucket_json_io_manager(init_context) -> BucketJsonIOManager:
    fusion = init_context.resources.fusion
    return BucketJsonIOManager(fusion.client(), fusion.bucket, fusion.root, fusion.s3_patience_seconds)
