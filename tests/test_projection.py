"""Frozen projections: artifact parsing without pickle, determinism, the lock, make-projection, drift."""

import io
import json
import subprocess
import sys
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from clipfarm_fusion.core import projection
from clipfarm_fusion.core.kernels import STRATEGIES, FusionOptions, fuse
from clipfarm_fusion.devtools.synthetic import object_array_npy
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.read import tables
from clipfarm_fusion.run import pipeline
from clipfarm_fusion.stores import shards

from .test_pipeline import expected_vector

CLI = str(Path(sys.executable).parent / "clipfarm-fusion")
DAY = date(2026, 3, 1)


def artifact(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, allow_pickle=False)
    return buffer.getvalue()


def test_projection_with_frozen_mlp_hand_computed():
    body = artifact(
        P=np.array(
            [[1.0, -1.0], [0.0, 2.0], [1.0, 0.0], [0.0, 0.0]], np.float32
        ),  # concat of 1+1+1 dims (+0)
        b=np.array([0.5, 0.0], np.float32),
        mlp_w0=np.array([[1.0], [1.0]], np.float32),
        mlp_b0=np.array([-1.0], np.float32),
        base_strategy=np.array("concat"),
        activation=np.array("relu"),
    )
    loaded = projection.parse(body, "mem.npz", STRATEGIES)
    assert loaded.input_dim == 4 and loaded.output_dim == 1
    video, audio = np.array([[2.0], [1.0]], np.float32), np.array([[3.0], [-4.0]], np.float32)
    text = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    out = fuse("projection", video, audio, text, np.array([True, False]), FusionOptions(projection=loaded))
    # row 0: x=[2,3,1,0] -> xP+b=[2+1+0.5, -2+6]=[3.5,4] -> relu -> 3.5+4-1 = 6.5 ; mask 1
    # row 1: x=[1,-4,0,0] -> [1+0.5, -1-8]=[1.5,-9] -> relu [1.5,0] -> 0.5 ; mask 0
    np.testing.assert_array_equal(out, np.array([[6.5, 1.0], [0.5, 0.0]], np.float32))


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        ({"Q": np.ones((2, 2))}, "needs a 2-D array P"),
        ({"P": np.ones((2, 2)), "b": np.ones(3)}, "b has shape"),
        ({"P": np.ones((2, 2)), "activation": np.array("tanh")}, "activation"),
        ({"P": np.ones((2, 2)), "base_strategy": np.array("projection")}, "base_strategy"),
        ({"P": np.array([[np.nan, 1.0]])}, "finite"),
        ({"P": np.ones((2, 2)), "mlp_w0": np.ones((3, 1))}, "mlp layer 0"),
    ],
)
def test_bad_artifacts_are_config_errors(arrays, problem):
    with pytest.raises(ConfigError, match=problem):
        projection.parse(artifact(**arrays), "a.npz", STRATEGIES)


def evil_artifact() -> bytes:
    """An .npz whose P is an object array carrying a pickle payload."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("P.npy", object_array_npy())
    return buffer.getvalue()


def test_pickled_artifacts_are_refused():
    with pytest.raises(ConfigError, match="not a numeric .npz"):
        projection.parse(evil_artifact(), "evil.npz", STRATEGIES)


def test_gaussian_is_seeded_and_pca_is_deterministic():
    assert projection.build("gaussian", 8, None, 32, "concat", 1) == projection.build(
        "gaussian", 8, None, 32, "concat", 1
    )
    assert projection.build("gaussian", 8, None, 32, "concat", 1) != projection.build(
        "gaussian", 8, None, 32, "concat", 2
    )
    sample = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    first = projection.build("pca", 4, sample, 32, "concat", 0)
    assert first == projection.build("pca", 4, sample.copy(), 32, "concat", 0)
    loaded = projection.parse(first, "pca.npz", STRATEGIES)
    np.testing.assert_allclose(loaded.matrix.T @ loaded.matrix, np.eye(4), atol=1e-5)


def test_projection_rows_do_not_depend_on_their_batch():
    rng = np.random.default_rng(3)
    loaded = projection.parse(projection.build("gaussian", 16, None, 3 * 24, "concat", 0), "g", STRATEGIES)
    parts = [rng.standard_normal((40, 24)).astype(np.float32) for _ in range(3)]
    present = np.ones(40, bool)
    options = FusionOptions(projection=loaded)
    whole = fuse("projection", *parts, present, options)
    split = np.vstack(
        [
            fuse("projection", *[p[:13] for p in parts], present[:13], options),
            fuse("projection", *[p[13:] for p in parts], present[13:], options),
        ]
    )
    assert whole.tobytes() == split.tobytes()


def test_make_projection_then_fuse_lock_and_drift(client, seed_day, tmp_path):
    seeded = seed_day(videos=40, mix={"full": 0.8, "placeholder": 0.2})
    pipeline.run(seeded.config(strategies=("concat",)), DAY)
    pca = tmp_path / "pca.npz"
    make = [
        CLI,
        "make-projection",
        "--kind",
        "pca",
        "--dim",
        "8",
        "--from-strategy",
        "concat",
        "--bucket",
        seeded.bucket,
        "--out",
        str(pca),
    ]
    result = subprocess.run(make, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    again = subprocess.run(make, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "never overwritten" in again.stderr

    summary = pipeline.run(seeded.config(strategies=("projection",), projection_uri=str(pca)), DAY)
    assert summary.strategies["projection"].fused_dim == 9
    loaded = projection.parse(pca.read_bytes(), str(pca), STRATEGIES)
    lock = json.loads(
        client.get_object(Bucket=seeded.bucket, Key="clipfarm/fused/projection/schema.json")["Body"].read()
    )
    assert lock["projection_id"] == loaded.projection_id and lock["base_strategy"] == "concat"
    table = tables.manifest_table(client, seeded.bucket, "clipfarm", "projection")
    assert table.num_rows == summary.strategies["projection"].manifest_added > 0
    assert set(table["projection_id"].to_pylist()) == {loaded.projection_id}
    for row in table.to_pylist():
        shard = shards.decode(client.get_object(Bucket=seeded.bucket, Key=row["fused_key"])["Body"].read())
        base = expected_vector(seeded, "concat", row["video_id"])
        want = np.empty((1, 8), np.float32)
        projection.apply(loaded, base[None, :-1], want)
        assert (
            shard["vectors"][row["shard_idx"]].tobytes()
            == np.append(want[0], base[-1]).astype(np.float32).tobytes()
        )

    other = tmp_path / "gauss.npz"
    other.write_bytes(projection.build("gaussian", 8, None, loaded.input_dim, "concat", 5))
    metadata = seeded.day.metadata_csv.decode().replace("/shorts/", "/shorts/v2/")
    client.put_object(
        Bucket=seeded.bucket, Key="clipfarm/metadata/shorts_metadata_horizon.csv", Body=metadata.encode()
    )
    stopped = pipeline.run(seeded.config(strategies=("projection",), projection_uri=str(other)), DAY)
    assert "projection_id locked" in stopped.stopped["projection"] and not stopped.strategies
    with pytest.raises(ConfigError, match="needs an artifact"):
        pipeline.run(seeded.config(strategies=("projection",)), DAY)

    migrate = [CLI, "migrate-schema", "--strategy", "projection", "--bucket", seeded.bucket]
    refused = subprocess.run(migrate, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--projection" in refused.stderr
    accepted = subprocess.run(
        [*migrate, "--projection", str(other)], capture_output=True, text=True, timeout=300
    )
    assert accepted.returncode == 0, accepted.stderr
    new_id = projection.parse(other.read_bytes(), str(other), STRATEGIES).projection_id
    lock = json.loads(
        client.get_object(Bucket=seeded.bucket, Key="clipfarm/fused/projection/schema.json")["Body"].read()
    )
    assert lock["projection_id"] == new_id and lock["history"][-1]["projection_id"] == loaded.projection_id
    after = pipeline.run(seeded.config(strategies=("projection",), projection_uri=str(other)), DAY)
    assert not after.stopped and after.strategies["projection"].fused > 0
