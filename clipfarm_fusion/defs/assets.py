"""One daily-partitioned asset per strategy, all computed by one subsettable graph-backed multi-asset:

    plan -> fan_out -> fuse_chunk[chunk_0000] ... fuse_chunk[chunk_N] -> commit

Materialising several strategies together is one plan over the selected strategies, so each embedding
object is read once per partition, not once per strategy. The plan cuts the day's delta into chunks of
the resource's `chunk_size` videos; each chunk is a step of its own, which the executor (`executors.py`)
runs side by side and retries alone; `commit` publishes the day and yields one materialization (and one
fail-rate check result) per selected strategy. The ops are in `ops.py`.

Each strategy depends on its own previous day (a self-dependency) because it does: day D's delta is
whatever day D-1 left in the state table. Dagster then backfills the days oldest first, one run per day
(`BackfillPolicy.multi_run(1)`), and never starts a day before the one before it has materialised, so a
backfill gives exactly what running the days one by one in order gives. `commit` materialises a day
only once its blocking output checks have passed, so a backfill stops at the first day that fails one.

The inputs are external assets (`upstream.py`); each fused asset depends on all of them. A graph-backed
asset takes its dependencies as graph inputs, so each dependency is one `Nothing` input of `plan`, and
`internal_asset_deps` says which asset depends on which (without it every strategy would depend on every
strategy's previous day).

Under several strategies, one that must stop (its schema.json disagrees with the inputs or the options)
stops alone: the others publish and materialise, then `commit` fails naming the stopped ones.
"""

from __future__ import annotations

import warnings

from dagster import (
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    BetaWarning,
    GraphIn,
    GraphOut,
    TimeWindowPartitionMapping,
    graph,
)

from clipfarm_fusion.defs import checks
from clipfarm_fusion.defs.ops import (
    CHECK_OUTPUTS,
    UPSTREAM_INPUTS,
    commit_day,
    fan_out,
    fuse_one_chunk,
    plan_day,
    previous_day_input,
)
from clipfarm_fusion.defs.partitions import daily_partitions
from clipfarm_fusion.defs.resources import ASSET_STRATEGIES
from clipfarm_fusion.defs.step_outputs import STEP_OUTPUTS, bucket_json_io_manager

DESCRIPTIONS = {
    "concat": "Fused vectors [video | audio | text | mask], fused_dim = Dv+Da+Dt+1.",
    "sum_pool": "Fused vectors: zero-padded elementwise sum of video, audio, text, plus the mask.",
    "max_pool": "Fused vectors: zero-padded elementwise max of video, audio, text, plus the mask.",
    "mean_pool": "Fused vectors: zero-padded mean over the modalities present, plus the mask.",
    "weighted_pool": "Fused vectors: weighted zero-padded mean (weights in schema.json), plus the mask.",
}
PREVIOUS_DAY = TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)
GRAPH_INPUTS = (*(previous_day_input(name) for name in ASSET_STRATEGIES), *UPSTREAM_INPUTS)
GRAPH_OUTPUTS = (*ASSET_STRATEGIES, *CHECK_OUTPUTS)


@graph(
    name="fuse_embeddings",
    ins={name: GraphIn() for name in GRAPH_INPUTS},
    out={name: GraphOut() for name in GRAPH_OUTPUTS},
)
def fuse_embeddings_graph(**dependencies):
    """One day: plan it, fuse each chunk in a step of its own, commit what the chunks staged. The
    dependencies (each strategy's previous day, the upstream inputs) are what `plan` waits for."""
    planned = plan_day(**dependencies)
    results = fan_out(planned).map(lambda index: fuse_one_chunk(planned, index)).collect()
    published = commit_day(planned, results)
    return {name: getattr(published, name) for name in GRAPH_OUTPUTS}


# The IO manager travels with the asset, so every materialisation of it (a code location, a test's
# `materialize`) hands the descriptors over as JSON in the bucket. `resource_defs` is a beta parameter
# of `from_graph` (its warning would be printed by every process that loads the code location).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", BetaWarning)
    fuse_embeddings = AssetsDefinition.from_graph(
        fuse_embeddings_graph,
        keys_by_input_name={
            **{previous_day_input(name): AssetKey(name) for name in ASSET_STRATEGIES},
            **UPSTREAM_INPUTS,
        },
        keys_by_output_name={name: AssetKey(name) for name in ASSET_STRATEGIES},
        internal_asset_deps={name: {AssetKey(name), *UPSTREAM_INPUTS.values()} for name in ASSET_STRATEGIES},
        partition_mappings={previous_day_input(name): PREVIOUS_DAY for name in ASSET_STRATEGIES},
        partitions_def=daily_partitions,
        backfill_policy=BackfillPolicy.multi_run(1),
        can_subset=True,
        resource_defs={STEP_OUTPUTS: bucket_json_io_manager},
        check_specs=[checks.fail_rate_spec(name) for name in ASSET_STRATEGIES],
        group_names_by_output_name={name: "fused_embeddings" for name in ASSET_STRATEGIES},
        descriptions_by_output_name={
            name: DESCRIPTIONS.get(name, f"Fused vectors of strategy {name}.") for name in ASSET_STRATEGIES
        },
    ).map_asset_specs(lambda spec: spec.merge_attributes(kinds={"s3", "parquet"}))
