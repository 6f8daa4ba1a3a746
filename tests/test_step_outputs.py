"""The day's step descriptors as JSON in the bucket (defs/step_outputs.py, defs/json_codec.py).

The codec tests build every descriptor from its declared fields (a value per type hint), so a field
added to `Plan`, `StrategyPlan` or `ChunkResult` is covered as soon as it is declared. The last test
materialises a day and finds the outputs in the bucket, JSON, until the staging sweep removes them.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from dagster import DagsterEventType, materialize

from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.defs import json_codec, step_outputs
from clipfarm_fusion.defs.assets import fuse_embeddings
from clipfarm_fusion.defs.resources import FusionResource
from clipfarm_fusion.run import staging
from clipfarm_fusion.stores import s3io


def sample(hint: Any, depth: int = 0) -> Any:
    """A value of the type `hint` declares, different from any default (so a lost field shows)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return sample(next(arg for arg in args if arg is not type(None)), depth)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: sample(hints[f.name], depth + 1) for f in dataclasses.fields(hint) if f.init})
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return (sample(args[0], depth + 1), sample(args[0], depth + 1))
        return tuple(sample(arg, depth + 1) for arg in args)
    if origin is list:
        return [sample(args[0], depth + 1)]
    if origin is dict:
        return {f"key{depth}": sample(args[1], depth + 1)}
    if hint is dict:
        return {"nested": {"list": [1, 2.5, "x", None, True]}, "count": 3}
    return {bool: True, int: 7 + depth, float: 0.25 + depth, str: f"text{depth}"}[hint]


DATACLASS_DESCRIPTORS = [kind for kind in step_outputs.DESCRIPTORS if dataclasses.is_dataclass(kind)]


@pytest.mark.fast
@pytest.mark.parametrize("kind", DATACLASS_DESCRIPTORS, ids=lambda kind: kind.__name__)
def test_every_descriptor_round_trips_through_json_from_its_declared_fields(kind):
    value = sample(kind)
    body = json_codec.dumps(value, step_outputs.DESCRIPTORS)

    assert json.loads(body)["type"] == kind.__name__  # plain JSON, not a pickle
    back = json_codec.loads(body, step_outputs.DESCRIPTORS)
    assert back == value and type(back) is kind


@dataclass(frozen=True)
class Part:
    name: str
    sizes: tuple[int, int]
    weight: float | None = None


@dataclass(frozen=True)
class Whole:
    """A descriptor as another engineer might write it tomorrow: nothing here is known to the codec."""

    parts: tuple[Part, ...]
    by_name: dict[str, Part]
    history: list[tuple[str, int]]
    optional: Part | None
    extra: dict = field(default_factory=dict)
    flag: bool = False


@pytest.mark.fast
def test_any_dataclass_of_json_types_round_trips_without_a_field_list():
    value = Whole(
        parts=(Part("a", (1, 2)), Part("b", (3, 4), 0.5)),
        by_name={"a": Part("a", (1, 2), 2.0)},
        history=[("x", 1)],
        optional=None,
        extra={"k": [1, {"j": None}]},
        flag=True,
    )
    back = json_codec.loads(json_codec.dumps(value, [Whole]), [Whole])
    assert back == value
    assert type(back.by_name["a"]) is Part and back.history == [("x", 1)]


@pytest.mark.fast
def test_a_document_naming_a_type_not_allowed_is_refused():
    body = json_codec.dumps(Part("a", (1, 2)), [Part])
    with pytest.raises(ValueError, match="not a step output document"):
        json_codec.loads(body, step_outputs.DESCRIPTORS)
    with pytest.raises(TypeError, match="Part is not a step output type"):
        json_codec.dumps(Part("a", (1, 2)), step_outputs.DESCRIPTORS)


@pytest.mark.fast
def test_a_value_json_cannot_carry_is_refused_naming_its_field():
    value = Whole(
        parts=(Part("a", (1, 2)),), by_name={}, history=[], optional=None, extra={"when": date(2026, 3, 1)}
    )
    with pytest.raises(TypeError, match=r"Whole\.extra\.when: date cannot be written as JSON"):
        json_codec.dumps(value, [Whole])
    with pytest.raises(TypeError, match="string keys"):
        json_codec.dumps(Whole((), {}, [], None, extra={1: "x"}), [Whole])


@pytest.mark.fast
def test_a_document_that_disagrees_with_the_declared_types_is_refused_naming_the_field():
    document = json.loads(json_codec.dumps(Part("a", (1, 2)), [Part]))
    document["value"]["sizes"] = [1, "two"]
    with pytest.raises(ValueError, match=r"Part\.sizes\[1\]: expected int"):
        json_codec.loads(json.dumps(document).encode(), [Part])
    document["value"] = {"name": "a", "sizes": [1, 2], "renamed": 3}
    with pytest.raises(ValueError, match="Part has no field renamed"):
        json_codec.loads(json.dumps(document).encode(), [Part])


def test_a_days_step_outputs_are_json_in_the_bucket_until_the_staging_sweep(seed_day, client):
    """`materialize` of the asset uses the IO manager bound to it: every output of plan, fan_out and
    fuse_chunk is a JSON object under the Dagster run's staging folder; the commit leaves them and the
    sweep removes them with the run, once it has been idle for a day."""
    seeded = seed_day(videos=30)
    layout = Layout(seeded.root)
    resources = {
        "fusion": FusionResource(
            bucket=seeded.bucket, root=seeded.root, state_dir=str(seeded.state_dir), chunk_size=10
        )
    }

    result = materialize(
        [fuse_embeddings], partition_key="2026-03-01", resources=resources, selection=["concat"]
    )

    assert result.success
    handled = [e for e in result.all_events if e.event_type == DagsterEventType.HANDLED_OUTPUT]
    assert {e.event_specific_data.manager_key for e in handled} == {step_outputs.STEP_OUTPUTS}
    keys = s3io.list_keys(client, seeded.bucket, layout.staging_prefix())
    chunks = sum(e.step_key.endswith("fan_out") for e in handled)
    assert chunks == 3 and len(keys) == 1 + 2 * chunks  # the plan, each chunk's index and its result
    assert all(key.startswith(f"{layout.staging_prefix()}{result.run_id}/outputs/") for key in keys)
    types_written = sorted(
        json.loads(s3io.get_object(client, seeded.bucket, key).body)["type"] for key in keys
    )
    assert types_written == ["ChunkResult"] * chunks + ["Plan"] + ["int"] * chunks

    assert staging.sweep(client, seeded.bucket, layout) == 0  # the run may still be re-executed
    later = datetime.now(UTC) + staging.STALE_AFTER + timedelta(minutes=1)
    assert staging.sweep(client, seeded.bucket, layout, now=later) == len(keys)
    assert s3io.list_keys(client, seeded.bucket, layout.staging_prefix()) == []
