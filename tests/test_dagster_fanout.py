"""A large delta fans out on Dagster's executors: plan -> fuse_chunk x N -> commit, one step per chunk.

Real runs of the `fuse_daily` job (`execute_job` on a persistent instance in a tmp DAGSTER_HOME) over a
real moto S3 server: on the multiprocess executor, on Celery with a real redis-server and two real
workers, and with a chunk step that dies or fails once and is retried alone. Each run must publish
exactly what the synthetic day says, as a run without chunks would.
"""

import contextlib
import importlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
import redis
import yaml
from dagster import (
    DagsterEventType,
    DagsterInstance,
    JobDefinition,
    execute_job,
    job,
    materialize,
    op,
    reconstructable,
    validate_run_config,
)

from clipfarm_fusion import read_manifest, read_state
from clipfarm_fusion.core.kernels import DEFAULT_STRATEGIES
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.core.policy import INVALID_VIDEO_ID, SUCCESS_FULL, SUCCESS_PLACEHOLDER
from clipfarm_fusion.defs import definitions, executors, step_outputs
from clipfarm_fusion.defs.assets import fuse_embeddings
from clipfarm_fusion.defs.resources import FusionResource
from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.devtools.embedded_s3 import free_port
from clipfarm_fusion.errors import ConfigError, S3UnavailableError
from clipfarm_fusion.run import chunk, pipeline
from clipfarm_fusion.stores import s3io

from .conftest import Seeded, infra_dagster_home
from .test_stages import assert_same, published

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PARTITION = "2026-03-01"
CHUNKS = 5
KILLED_CHUNK = 1
STARTUP_SECONDS = 60


def fuse_daily_job() -> JobDefinition:
    """The code location's daily job, as a reconstructable target: spawned step processes and Celery
    workers load it by this name (the definitions module as loaded in that process)."""
    return definitions.defs.resolve_job_def("fuse_daily")


def fuse_daily_job_killing_one_chunk() -> JobDefinition:
    """`fuse_daily`, except that in a step process (never in pytest's) chunk KILLED_CHUNK SIGKILLs its
    own process after its first batch, on the first attempt only: a machine lost mid-chunk."""
    if multiprocessing.parent_process() is not None:
        fuse = chunk.fuse_chunk
        marker = Path(os.environ["DAGSTER_HOME"], f"killed-chunk-{KILLED_CHUNK}")

        def die_once(config, plan, index, client=None, log=None, on_progress=None):
            if index == KILLED_CHUNK and not marker.exists():
                marker.touch()
                on_progress = lambda looked_at: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
            return fuse(config, plan, index, client, log, on_progress)

        chunk.fuse_chunk = die_once
    return fuse_daily_job()


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> Path:
    """A tmp DAGSTER_HOME with the repo's dagster.yaml (pool limit and all), its storages created."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    DagsterInstance.from_config(str(home)).dispose()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def load_with(monkeypatch):
    """load_with(**env): reload the code location with that environment, as a deployment loads it; the
    default code location is loaded again afterwards."""

    def reload(**env: str) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        importlib.reload(definitions)

    yield reload
    monkeypatch.undo()
    importlib.reload(definitions)


def day_with_chunks(seed_day, chunks: int = CHUNKS):
    """A synthetic day and the chunk_size that cuts its delta into exactly `chunks` chunks."""
    seeded = seed_day(videos=60)
    work = sum(status != INVALID_VIDEO_ID for status in seeded.day.expected_status().values())
    chunk_size = math.ceil(work / chunks)
    assert math.ceil(work / chunk_size) == chunks
    return seeded, chunk_size


def fusion_config(seeded, chunk_size: int) -> dict:
    """The resource as run config: stored on the run, so every step process and worker sees it."""
    return {
        "bucket": seeded.bucket,
        "root": seeded.root,
        "state_dir": str(seeded.state_dir),
        "shard_size": 4,
        "chunk_size": chunk_size,
        "fetch_threads": 4,
    }


def run_day(job_fn, seeded, chunk_size: int) -> tuple[bool, list]:
    """`fuse_daily` for PARTITION through the code location's executor; (success, event records)."""
    with DagsterInstance.get() as instance:
        result = execute_job(
            reconstructable(job_fn),
            instance=instance,
            run_config={"resources": {"fusion": {"config": fusion_config(seeded, chunk_size)}}},
            tags={"dagster/partition": PARTITION},
        )
        return result.success, instance.all_logs(result.run_id)


def steps(records, event_type: DagsterEventType) -> Counter:
    """Step names (the graph's op, with `[chunk_...]` dropped) of the events of one type."""
    return Counter(
        record.step_key.split(".")[-1].split("[")[0]
        for record in records
        if record.dagster_event and record.dagster_event.event_type == event_type
    )


def step_keys(records, event_type: DagsterEventType) -> list[str]:
    return sorted(
        record.step_key
        for record in records
        if record.dagster_event and record.dagster_event.event_type == event_type
    )


def assert_published_as_expected(client, seeded) -> None:
    """Every strategy's state and manifest hold what the synthetic day says one run publishes, and equal
    what one in-process pass over the same day publishes: statuses, retry counts, manifest keys and
    every vector, bit for bit."""
    reference = Seeded(seeded.bucket, "one-pass", seeded.day, seeded.objects, seeded.state_dir / "one-pass")
    synthetic.seed(client, reference.bucket, reference.root, reference.day, reference.objects, threads=8)
    pipeline.run(
        reference.config(strategies=DEFAULT_STRATEGIES), date.fromisoformat(PARTITION), client=client
    )
    for strategy in DEFAULT_STRATEGIES:
        assert_same(published(reference, strategy), published(seeded, strategy))
    expected = {
        video_id: status
        for video_id, status in seeded.day.expected_status().items()
        if status != INVALID_VIDEO_ID
    }
    fused = {v for v, s in expected.items() if s in (SUCCESS_FULL, SUCCESS_PLACEHOLDER)}
    for strategy in DEFAULT_STRATEGIES:
        state = read_state(strategy, bucket=seeded.bucket, root=seeded.root, client=client)
        assert dict(zip(state["video_id"], state["status"], strict=True)) == expected
        manifest = read_manifest(strategy, bucket=seeded.bucket, root=seeded.root, client=client)
        assert sorted(manifest["video_id"]) == sorted(fused)


def test_a_day_fans_out_into_one_step_per_chunk_on_the_multiprocess_executor(
    seed_day, client, dagster_home, load_with
):
    load_with(CLIPFARM_EXECUTOR="multiprocess", CLIPFARM_MAX_CONCURRENT="2")
    assert definitions.defs.executor.name == "multiprocess"
    seeded, chunk_size = day_with_chunks(seed_day)

    success, records = run_day(fuse_daily_job, seeded, chunk_size)

    assert success
    succeeded = steps(records, DagsterEventType.STEP_SUCCESS)
    assert (succeeded["plan"], succeeded["fuse_chunk"], succeeded["commit"]) == (1, CHUNKS, 1)
    assert [key for key in step_keys(records, DagsterEventType.STEP_SUCCESS) if "fuse_chunk" in key] == [
        f"fuse_embeddings.fuse_chunk[chunk_{i:04d}]" for i in range(CHUNKS)
    ]
    started = [
        r for r in records if r.dagster_event and r.dagster_event.event_type == DagsterEventType.STEP_START
    ]
    pids = {r.dagster_event.pid for r in started}
    assert os.getpid() not in pids and len(pids) == len(started)  # each step in a spawned process of its own
    materialized = {e.asset_key.to_user_string() for e in _materializations(records)}
    assert materialized == set(DEFAULT_STRATEGIES)
    assert_published_as_expected(client, seeded)


def _materializations(records):
    return [
        r.dagster_event.event_specific_data.materialization
        for r in records
        if r.dagster_event and r.dagster_event.event_type == DagsterEventType.ASSET_MATERIALIZATION
    ]


def test_a_killed_chunk_step_reruns_alone_and_the_day_converges(seed_day, client, dagster_home, load_with):
    """SIGKILL of one chunk's process mid-chunk (after it wrote a shard): that step alone is retried,
    the other chunks run once, and what is published is what a run without the kill publishes."""
    load_with(CLIPFARM_EXECUTOR="multiprocess", CLIPFARM_MAX_CONCURRENT="2")
    seeded, chunk_size = day_with_chunks(seed_day, chunks=3)  # fewer step processes: a quicker test

    success, records = run_day(fuse_daily_job_killing_one_chunk, seeded, chunk_size)

    assert success and (dagster_home / f"killed-chunk-{KILLED_CHUNK}").exists()
    crashes = [
        r.dagster_event.message
        for r in records
        if r.dagster_event
        and r.dagster_event.event_type == DagsterEventType.ENGINE_EVENT
        and "terminated by signal" in (r.dagster_event.message or "")
    ]
    assert len(crashes) == 1 and f"chunk_{KILLED_CHUNK:04d}" in crashes[0] and "SIGKILL" in crashes[0]
    retried = [key.split(".")[-1] for key in step_keys(records, DagsterEventType.STEP_UP_FOR_RETRY)]
    assert retried == [f"fuse_chunk[chunk_{KILLED_CHUNK:04d}]"]
    started = steps(records, DagsterEventType.STEP_START)
    assert (started["fuse_chunk"], started["commit"]) == (3, 1)  # a retry is a restart, not a start
    assert steps(records, DagsterEventType.STEP_RESTARTED) == Counter({"fuse_chunk": 1})
    assert steps(records, DagsterEventType.STEP_SUCCESS)["fuse_chunk"] == 3
    assert_published_as_expected(client, seeded)


def test_a_transient_failure_of_one_chunk_is_retried_and_the_day_converges(seed_day, client, monkeypatch):
    """S3 unreachable past our patience in one chunk: that step fails as retryable and its retry
    publishes the day as if nothing had happened."""
    seeded, chunk_size = day_with_chunks(seed_day)
    fuse, calls = chunk.fuse_chunk, Counter()

    def unavailable_once(config, plan, index, *args, **kwargs):
        calls[index] += 1
        if index == 1 and calls[index] == 1:
            raise S3UnavailableError("S3 unreachable for 60s while fusing")
        return fuse(config, plan, index, *args, **kwargs)

    monkeypatch.setattr(chunk, "fuse_chunk", unavailable_once)
    result = materialize(
        [fuse_embeddings],
        partition_key=PARTITION,
        resources={"fusion": FusionResource(**fusion_config(seeded, chunk_size))},
    )

    assert result.success
    assert calls == Counter({0: 1, 1: 2, 2: 1, 3: 1, 4: 1})
    [retry] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    assert retry.step_key.endswith("fuse_chunk[chunk_0001]")
    assert_published_as_expected(client, seeded)


def test_a_chunk_failing_on_bad_input_is_not_retried(seed_day, monkeypatch):
    """Bad config or a broken store needs a person: the step fails at once with the message, and the
    commit never runs, so nothing is published."""
    seeded, chunk_size = day_with_chunks(seed_day)
    calls = Counter()

    def bad_input(config, plan, index, *args, **kwargs):
        calls[index] += 1
        raise ConfigError(f"chunk {index}: the staged input is unreadable; rerun the day")

    monkeypatch.setattr(chunk, "fuse_chunk", bad_input)
    result = materialize(
        [fuse_embeddings],
        partition_key=PARTITION,
        resources={"fusion": FusionResource(**fusion_config(seeded, chunk_size))},
        raise_on_error=False,
    )

    assert not result.success and calls == Counter(dict.fromkeys(range(CHUNKS), 1))
    assert not [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_failure_data.user_failure_data.description.startswith("ConfigError: chunk ")
    assert not result.get_asset_materialization_events()


@pytest.fixture
def redis_url(tmp_path) -> str:
    """A real redis-server on a free loopback port, stopped at teardown."""
    server = shutil.which("redis-server")
    if server is None:
        reason = "redis-server is not installed: apt-get install redis-server"
        if os.environ.get("CLIPFARM_REQUIRE_REDIS") == "1":
            pytest.fail(f"{reason} (CLIPFARM_REQUIRE_REDIS=1)")
        pytest.skip(reason)
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        probe = redis.Redis(port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None, "redis-server exited during startup"
                assert time.monotonic() < deadline, f"redis-server not up after {STARTUP_SECONDS}s"
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


WORKERS = ("w1", "w2")


@pytest.fixture
def celery_workers(redis_url, postgres_dagster_home, tmp_path) -> dict[str, Path]:
    """Two real workers (`dagster-celery worker start`, one task at a time each) on the deployment's
    instance (infra/dagster.yaml, Postgres), each with a DAGSTER_HOME of its own, as on two machines:
    {name: its home}. Stopped with `worker terminate --all`, and their process groups killed if that
    was not enough."""
    config = tmp_path / "celery.yaml"
    config.write_text(yaml.safe_dump({"execution": {"config": {"broker": redis_url, "backend": redis_url}}}))
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # `celery` itself
        "PYTHONPATH": str(REPO),  # this module: the runs' code pointer names it
        "CLIPFARM_EXECUTOR": "celery",
        "CLIPFARM_CELERY_BROKER": redis_url,
    }
    dagster_celery = str(BIN / "dagster-celery")
    logs = {name: tmp_path / f"{name}.log" for name in WORKERS}
    homes = {name: infra_dagster_home(tmp_path / f"{name}_home") for name in WORKERS}
    processes = []
    try:
        for name in WORKERS:
            command = [dagster_celery, "worker", "start", "-A", "dagster_celery.app", "-y", str(config)]
            with logs[name].open("w") as log:
                processes.append(
                    subprocess.Popen(
                        [*command, "-n", name, "--", "--concurrency=1"],
                        cwd=REPO,
                        env=env | {"DAGSTER_HOME": str(homes[name])},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + STARTUP_SECONDS
        while not all(" ready." in logs[name].read_text() for name in WORKERS):
            for name, process in zip(WORKERS, processes, strict=True):
                assert process.poll() is None, f"worker {name} exited:\n{logs[name].read_text()}"
            assert time.monotonic() < deadline, f"workers not ready after {STARTUP_SECONDS}s"
            time.sleep(0.2)
        yield homes
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [dagster_celery, "worker", "terminate", "--all", "-y", str(config)],
                env=env,
                capture_output=True,
                timeout=60,
            )
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):  # whatever is left of its group: celery, its pool
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# dagster_celery registers its one task again for every step it submits (the same function each time).
@pytest.mark.filterwarnings("ignore:Task name 'execute_plan' is already registered")
def test_a_day_fans_out_onto_celery_workers(
    seed_day, client, celery_workers, redis_url, load_with, postgres_dagster_home
):
    """The deployment's shape: the run and two workers with DAGSTER_HOMEs of their own share the
    instance of infra/dagster.yaml (Postgres) and nothing on disk; the steps' outputs are JSON objects
    in the bucket."""
    load_with(CLIPFARM_EXECUTOR="celery", CLIPFARM_CELERY_BROKER=redis_url)
    assert definitions.defs.executor.name == "celery"
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    seeded, chunk_size = day_with_chunks(seed_day)

    success, records = run_day(fuse_daily_job, seeded, chunk_size)

    assert success
    succeeded = steps(records, DagsterEventType.STEP_SUCCESS)
    assert (succeeded["fuse_chunk"], succeeded["commit"]) == (CHUNKS, 1)
    ran_on = {
        record.step_key: str(record.dagster_event.engine_event_data.metadata["Celery worker"].value)
        for record in records
        if record.dagster_event
        and record.dagster_event.event_type == DagsterEventType.ENGINE_EVENT
        and "in celery worker" in (record.dagster_event.message or "")
    }
    assert set(ran_on) == set(step_keys(records, DagsterEventType.STEP_SUCCESS))
    assert {worker.split("@")[0] for worker in ran_on.values()} <= set(celery_workers)
    assert_step_outputs_in_the_bucket(
        client, seeded, records, [postgres_dagster_home, *celery_workers.values()]
    )
    assert_published_as_expected(client, seeded)


def assert_step_outputs_in_the_bucket(client, seeded, records, homes: list[Path]) -> None:
    """Every output of plan, fan_out and fuse_chunk went through the `step_outputs` IO manager to one
    JSON object under the run's staging folder, and no DAGSTER_HOME holds a step output (only the
    steps' captured stdout and stderr: compute logs)."""
    handled = [
        r.dagster_event.event_specific_data
        for r in records
        if r.dagster_event and r.dagster_event.event_type == DagsterEventType.HANDLED_OUTPUT
    ]
    assert {data.manager_key for data in handled} == {step_outputs.STEP_OUTPUTS}
    assert steps(records, DagsterEventType.HANDLED_OUTPUT) == Counter(
        {"plan": 1, "fan_out": CHUNKS, "fuse_chunk": CHUNKS}
    )
    prefix = f"{Layout(seeded.root).staging_prefix()}{records[0].run_id}/outputs/"
    keys = s3io.list_keys(client, seeded.bucket, prefix)
    assert len(keys) == 1 + 2 * CHUNKS
    documents = [json.loads(s3io.get_object(client, seeded.bucket, key).body) for key in keys]
    assert Counter(document["type"] for document in documents) == {
        "Plan": 1,
        "int": CHUNKS,
        "ChunkResult": CHUNKS,
    }
    on_disk = [
        path
        for home in homes
        for path in (home / "storage").rglob("*")
        if path.is_file() and "compute_logs" not in path.parts
    ]
    assert on_disk == []


def executor_config(env: dict[str, str]) -> dict:
    """The execution config a run resolves to on the executor `env` names: {executor name: config}."""

    @op
    def step() -> None:
        pass

    @job(executor_def=executors.executor_from_env(env))
    def probe() -> None:
        step()

    return validate_run_config(probe, {})["execution"]


@pytest.mark.parametrize(
    ("env", "name", "expected"),
    [
        ({}, "multiprocess", {"max_concurrent": None, "start_method": {"spawn": {}}}),
        (
            {"CLIPFARM_EXECUTOR": "multiprocess", "CLIPFARM_MAX_CONCURRENT": "3"},
            "multiprocess",
            {"max_concurrent": 3, "start_method": {"spawn": {}}},
        ),
        ({"CLIPFARM_EXECUTOR": "in_process"}, "in_process", {}),
        (
            {"CLIPFARM_EXECUTOR": "celery", "CLIPFARM_CELERY_BROKER": "redis://broker:6379/0"},
            "celery",
            {"broker": "redis://broker:6379/0", "backend": "redis://broker:6379/0"},
        ),
        (
            {
                "CLIPFARM_EXECUTOR": "celery",
                "CLIPFARM_CELERY_BROKER": "redis://broker:6379/0",
                "CLIPFARM_CELERY_BACKEND": "redis://results:6379/1",
            },
            "celery",
            {"broker": "redis://broker:6379/0", "backend": "redis://results:6379/1"},
        ),
    ],
)
def test_the_executor_is_the_one_clipfarm_executor_names(env, name, expected):
    """Multiprocess steps are spawned, never forked: delta-rs's runtime panics in a forked child."""
    [(resolved, config)] = executor_config(env).items()
    assert resolved == name and config.items() >= expected.items()


def test_an_unknown_executor_is_refused_naming_the_choices():
    with pytest.raises(ConfigError) as refused:
        executors.executor_from_env({"CLIPFARM_EXECUTOR": "threads"})
    assert "'threads'" in str(refused.value)
    assert all(choice in str(refused.value) for choice in executors.CHOICES)


def test_a_bad_step_limit_is_refused():
    with pytest.raises(ConfigError, match="CLIPFARM_MAX_CONCURRENT='many'"):
        executors.executor_from_env({"CLIPFARM_MAX_CONCURRENT": "many"})


@pytest.mark.parametrize(("choice", "module"), [("celery", "dagster_celery"), ("k8s", "dagster_k8s")])
def test_an_executor_whose_extra_is_missing_names_the_extra(choice, module, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # what an install without the extra sees
    with pytest.raises(ConfigError, match=rf"pip install 'clipfarm-fusion\[{choice}\]'"):
        executors.executor_from_env({"CLIPFARM_EXECUTOR": choice})


def test_the_default_code_location_imports_neither_celery_nor_kubernetes():
    """A fresh interpreter: the extras are imported only when chosen, so they need not be installed."""
    probe = (
        "import sys\n"
        "from clipfarm_fusion.defs.definitions import defs\n"
        "print(defs.executor.name, 'dagster_celery' in sys.modules, 'dagster_k8s' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPFARM_")}
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split() == ["multiprocess", "False", "False"]
