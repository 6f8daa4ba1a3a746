"""Generated histories of runs, checked against the invariants of docs/safety.md and a sequential reference.

Each seed draws a history on a small day (at most 12 videos, one or two strategies): runs for random
dates in any order, text arriving file-then-row or row-then-file, a horizon row changing its URL, an
upstream `.npy` rewritten, two runs interleaved stage by stage (plan A, plan B, fuse B, commit A, ...),
runs abandoned at a random stage, `gc` with no grace and `maintain` between runs. After every step I1
(one latest row per video, the newest commit's), I2 (state and manifest agree) and I4 (every pointer
resolves) hold, through `verify` as a user runs it. After a final quiet run (the newest date, with a full
text recheck) the state and the manifest equal what `expected` derives from the final inputs alone,
written without any of the pipeline's code.

A failing history names its seed and prints its steps; rerun one with
`pytest tests/test_histories.py -k 'seed_17'`. CLIPFARM_HISTORIES sets how many seeds run (default 60,
about 6 minutes on 2 cores; 200 or more for a deep run before a release).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from clipfarm_fusion import read_manifest, read_state
from clipfarm_fusion.admin import changes, maintenance, sweep
from clipfarm_fusion.config import FusionConfig
from clipfarm_fusion.core.layout import Layout
from clipfarm_fusion.devtools import synthetic
from clipfarm_fusion.errors import ConfigError
from clipfarm_fusion.read import verify
from clipfarm_fusion.run import chunk, commit, pipeline, plan
from clipfarm_fusion.stores import refusals, state

LOG = logging.getLogger("histories")
ROOT = "clipfarm"
LAYOUT = Layout(ROOT)
DIM = 4
FIRST_DAY = date(2026, 3, 1)
DAYS = [FIRST_DAY + timedelta(days=n) for n in range(8)]
HISTORIES = int(os.environ.get("CLIPFARM_HISTORIES", "60"))
STEPS = 5  # steps per history, besides the final quiet run


@dataclass
class Inputs:
    """What the upstream stages have written, as the reference sees it."""

    horizon: dict[str, list[tuple[str, str]]]  # video_id -> [(url, captured_at)]
    text_files: set[str]
    text_rows: dict[str, tuple[str, str]]  # video_id -> (source_hash, status)
    clock: int = 0  # the text stage's processed_at, one tick per change

    def current(self, video_id: str) -> tuple[str, str]:
        return max(self.horizon[video_id], key=lambda row: row[1])


def source_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def expected(inputs: Inputs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(state, manifest latest per video) of a sequential run over `inputs`, from the gating rules alone:
    a text file means a full vector; without one, a text-stage row for this very hash saying no_captions
    means a placeholder; anything else waits."""
    state, latest = [], []
    for video_id in sorted(inputs.horizon):
        url, captured_at = inputs.current(video_id)
        digest = source_hash(url)
        if video_id in inputs.text_files:
            status, text_present = "success_full", 1
        elif inputs.text_rows.get(video_id) == (digest, "no_captions"):
            status, text_present = "success_text_placeholder", 0
        else:
            status, text_present = "missing_text_pending", None
        state.append((video_id, digest, status))
        if text_present is not None:
            latest.append((video_id, digest, status, text_present))
    return (
        pd.DataFrame(state, columns=["video_id", "source_hash", "status"]),
        pd.DataFrame(latest, columns=["video_id", "source_hash", "fusion_status", "text_present"]),
    )


@dataclass
class History:
    rng: random.Random
    client: object
    bucket: str
    config: FusionConfig
    inputs: Inputs
    steps: list[str] = field(default_factory=list)
    open_runs: dict[str, dict] = field(default_factory=dict)  # name -> {"plan", "results"}
    runs: int = 0

    # the upstream stages

    def put_horizon(self) -> None:
        rows = [
            {"video_id": v, "url": url, "captured_at": at}
            for v, versions in self.inputs.horizon.items()
            for url, at in versions
        ]
        body = pd.DataFrame(rows).to_csv(index=False).encode()
        self.client.put_object(Bucket=self.bucket, Key=LAYOUT.metadata_key(), Body=body)

    def put_text_rows(self) -> None:
        self.inputs.clock += 1
        stamp = f"2026-04-01T00:00:{self.inputs.clock:02d}+00:00"
        rows = [(v, h, stamp, status, None) for v, (h, status) in sorted(self.inputs.text_rows.items())]
        body = synthetic.text_state_db(rows)
        self.client.put_object(Bucket=self.bucket, Key=LAYOUT.text_state_key(), Body=body)

    def put_npy(self, modality: str, video_id: str) -> None:
        vector = np.asarray([self.rng.uniform(-1, 1) for _ in range(DIM)], dtype=np.float32)
        key = LAYOUT.embedding_key(modality, video_id)
        self.client.put_object(Bucket=self.bucket, Key=key, Body=synthetic.npy_bytes(vector))

    def text_file_arrives(self, video_id: str) -> None:
        self.put_npy("text", video_id)
        self.inputs.text_files.add(video_id)

    def text_row_says_success(self, video_id: str) -> None:
        url, _ = self.inputs.current(video_id)
        self.inputs.text_rows[video_id] = (source_hash(url), "success")
        self.put_text_rows()

    def url_changes(self, video_id: str, day: date) -> None:
        """A newer horizon row with another URL; the text stage rows it for the new hash at once."""
        url = f"{synthetic.url_for(video_id)}?v={len(self.inputs.horizon[video_id])}"
        self.inputs.horizon[video_id].append((url, f"{day.isoformat()}T12:00:00+00:00"))
        status = "success" if video_id in self.inputs.text_files else "no_captions"
        self.inputs.text_rows[video_id] = (source_hash(url), status)
        self.put_horizon()
        self.put_text_rows()

    # the job

    def start(self, name: str, day: date) -> None:
        self.open_runs[name] = {"plan": plan.plan(self.config, day, self.client, LOG)}

    def fuse(self, name: str) -> None:
        run = self.open_runs[name]
        run["results"] = chunk.run_all(self.config, run["plan"], self.client, LOG)

    def finish(self, name: str) -> None:
        run = self.open_runs.pop(name)
        commit.commit(self.config, run["plan"], run["results"], self.client)

    # the steps

    def step(self) -> bool:
        """One step; True when it wrote to the lake (a commit, gc, maintain), so the invariants are due."""
        rng = self.rng
        videos = sorted(self.inputs.horizon)
        video_id = rng.choice(videos)
        day = rng.choice(DAYS)
        kind = rng.choices(
            [
                "run",
                "text_file",
                "text_row",
                "url",
                "npy",
                "interleave",
                "abort",
                "gc",
                "maintain",
                "refuse",
                "detect",
            ],
            weights=[5, 2, 2, 1, 1, 2, 1, 1, 1, 1, 1],
        )[0]
        if kind == "run":
            self.log(f"run {day}")
            pipeline.run(self.config, day, client=self.client)
            return True
        elif kind == "text_file":
            self.log(f"text file arrives for {video_id}")
            self.text_file_arrives(video_id)
        elif kind == "text_row":
            self.log(f"text row says success for {video_id}")
            self.text_row_says_success(video_id)
        elif kind == "url":
            moved = rng.choice(DAYS[1:])
            self.log(f"url of {video_id} changes on {moved}")
            self.url_changes(video_id, moved)
        elif kind == "npy":
            modality = rng.choice(["video", "audio"])
            self.log(f"{modality} .npy of {video_id} rewritten")
            self.put_npy(modality, video_id)
        elif kind == "interleave":
            self.interleave(day, rng.choice(DAYS), video_id)  # checks after each commit
        elif kind == "abort":
            self.log(f"run {day} abandoned after {'plan' if rng.random() < 0.5 else 'fuse'}")
            self.start("abandoned", day)
            if self.steps[-1].endswith("fuse"):
                self.fuse("abandoned")
            self.open_runs.pop("abandoned")
        elif kind == "gc":
            self.log("gc --older-than 0s")
            self.gc()
            return True
        elif kind == "maintain":
            self.log("maintain")
            for strategy in self.config.strategies:
                maintenance.maintain(self.client, self.bucket, ROOT, strategy)
            return True
        elif kind == "refuse":
            chosen = rng.sample(videos, rng.randint(1, len(videos)))
            self.log(f"refuse {len(chosen)} videos, then run {day}")
            self.request(chosen, refusals.REFUSE)
            pipeline.run(self.config, day, client=self.client)
            return True
        elif kind == "detect":
            self.log("detect-changes")
            self.detect()
        return False

    def request(self, ids: list[str], reason: str) -> None:
        for strategy in self.config.strategies:
            store = state.open_store(self.client, self.bucket, LAYOUT, strategy, self.config.state_dir, 5.0)
            refusals.write(self.client, self.bucket, LAYOUT, strategy, ids, reason, store.version)

    def detect(self) -> None:
        for strategy in self.config.strategies:
            with unpublished_skipped():
                changes.detect(self.client, self.bucket, ROOT, strategy)

    def interleave(self, first: date, second: date, video_id: str) -> None:
        """Two runs stage by stage in a random order that keeps each run's own order, with text news,
        a gc or a third run landing in between."""
        stages = [
            ("A", "plan"),
            ("A", "fuse"),
            ("A", "commit"),
            ("B", "plan"),
            ("B", "fuse"),
            ("B", "commit"),
        ]
        order: list[tuple[str, str]] = []
        pending = {"A": [s for s in stages if s[0] == "A"], "B": [s for s in stages if s[0] == "B"]}
        while pending["A"] or pending["B"]:
            name = self.rng.choice([n for n in pending if pending[n]])
            order.append(pending[name].pop(0))
        between = self.rng.randrange(1, len(order))
        self.log(f"interleave A={first} B={second}: {' '.join(a + ':' + s for a, s in order)}")
        days = {"A": first, "B": second}
        for position, (name, stage) in enumerate(order):
            if position == between:
                self.disturb(video_id)
            if stage == "plan":
                self.start(name, days[name])
            elif stage == "fuse":
                self.fuse(name)
            else:
                self.finish(name)
                self.check(f"after {name}:commit")

    def disturb(self, video_id: str) -> None:
        choice = self.rng.choice(["text_file", "text_row", "gc", "run"])
        self.log(f"  meanwhile: {choice} ({video_id})")
        if choice == "text_file":
            self.text_file_arrives(video_id)
        elif choice == "text_row":
            self.text_row_says_success(video_id)
        elif choice == "gc":
            self.gc()
        else:
            pipeline.run(self.config, self.rng.choice(DAYS), client=self.client)

    def gc(self) -> None:
        for strategy in self.config.strategies:
            with unpublished_skipped():  # with nothing published gc refuses (test_gc)
                sweep.sweep(self.client, self.bucket, ROOT, strategy, older_than=timedelta(0))

    def settle(self) -> None:
        """The upstream stages catch up: every row saying success has its file, every file its row."""
        for video_id, (_, status) in list(self.inputs.text_rows.items()):
            if status == "success" and video_id not in self.inputs.text_files:
                self.text_file_arrives(video_id)
        for video_id in sorted(self.inputs.text_files):
            self.inputs.text_rows[video_id] = (source_hash(self.inputs.current(video_id)[0]), "success")
        self.put_text_rows()

    def log(self, line: str) -> None:
        self.steps.append(line)

    def check(self, where: str) -> None:
        for strategy in self.config.strategies:
            with unpublished_skipped():
                report = verify.verify_strategy(self.client, self.bucket, ROOT, strategy)
                assert report.ok, self.failure(where, "\n".join(report.lines()))

    def failure(self, where: str, what: str) -> str:
        return f"{where}: {what}\nsteps:\n  " + "\n  ".join(self.steps)


@contextlib.contextmanager
def unpublished_skipped() -> Iterator[None]:
    """Skip what needs a manifest while nothing is published yet (the ConfigError that says so)."""
    try:
        yield
    except ConfigError as exc:
        if "nothing has been fused" not in str(exc):
            raise


def new_history(seed: int, client, bucket: str, state_dir) -> History:
    rng = random.Random(seed)
    videos = rng.randint(4, 12)
    day, objects = synthetic.make_day(
        videos, dim=DIM, mix={"full": 0.5, "placeholder": 0.5}, run_date=FIRST_DAY, seed=seed
    )
    synthetic.seed(client, bucket, ROOT, day, objects, threads=8)
    horizon_rows = pd.read_csv(io.BytesIO(day.metadata_csv))
    horizon: dict[str, list[tuple[str, str]]] = {}
    for row in horizon_rows.itertuples():
        horizon.setdefault(row.video_id, []).append((row.url, row.captured_at))
    inputs = Inputs(
        horizon=horizon,
        text_files={v for v, case in day.cases.items() if case == "full"},
        text_rows={
            v: (source_hash(synthetic.url_for(v)), "success" if case == "full" else "no_captions")
            for v, case in day.cases.items()
        },
    )
    strategies = ("concat", "max_pool") if seed % 4 == 3 else ("concat",)
    config = FusionConfig(
        bucket=bucket,
        root=ROOT,
        strategies=strategies,
        state_dir=state_dir,
        text_dim=DIM,
        fetch_threads=4,
        shard_size=rng.choice([2, 4, 16]),
        chunk_size=16,
    )
    history = History(rng, client, bucket, config, inputs)
    history.put_text_rows()
    return history


@pytest.mark.parametrize("seed", range(HISTORIES), ids=lambda seed: f"seed_{seed}")
def test_any_history_keeps_the_invariants_and_converges_to_the_reference(seed, client, bucket, tmp_path):
    history = new_history(seed, client, bucket, tmp_path)
    for _ in range(STEPS):
        if history.step():
            history.check("after the step")
    history.settle()
    newest = max(DAYS)
    history.log(f"quiet run {newest} --recheck-text")
    pipeline.run(replace(history.config, recheck_text_files=True), newest, client=client)
    history.check("after the quiet run")
    history.log("detect-changes, then a quiet run")
    history.detect()
    pipeline.run(history.config, newest, client=client)
    history.check("after detect-changes and a run")
    want_state, want_latest = expected(history.inputs)
    for strategy in history.config.strategies:
        state = read_state(strategy, bucket=bucket, root=ROOT, client=client)
        got_state = (
            state[["video_id", "source_hash", "status"]].sort_values("video_id").reset_index(drop=True)
        )
        assert got_state.equals(want_state), history.failure(
            f"{strategy} state", f"got\n{got_state}\nwant\n{want_state}"
        )
        manifest = read_manifest(strategy, bucket=bucket, root=ROOT, client=client)
        latest = latest_rows(manifest)
        assert latest.equals(want_latest), history.failure(
            f"{strategy} manifest", f"got\n{latest}\nwant\n{want_latest}"
        )
        assert not made_from_stale_inputs(client, bucket, manifest), history.failure(
            f"{strategy} lineage",
            f"vectors made from inputs that changed since: {made_from_stale_inputs(client, bucket, manifest)}",
        )


def made_from_stale_inputs(client, bucket: str, manifest: pd.DataFrame) -> list[str]:
    """I5: after change detection and a run, every video's latest vector was made from its inputs as
    they are now (the ETag its row recorded is the object's current one)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{ROOT}/embeddings/")
    now = {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}
    stale = []
    for row in served(manifest).itertuples():
        for modality in ("video", "audio", "text"):
            recorded = getattr(row, f"{modality}_etag")
            if isinstance(recorded, str) and now.get(getattr(row, f"{modality}_emb_key")) != recorded:
                stale.append(f"{row.video_id}/{modality}")
    return stale


def served(manifest: pd.DataFrame) -> pd.DataFrame:
    """The newest manifest row per video by (captured_at, fused_at): what a reader is served."""
    ordered = manifest.assign(at=pd.to_datetime(manifest["captured_at"], utc=True)).sort_values(
        ["video_id", "at", "fused_at"]
    )
    return ordered.groupby("video_id").tail(1)


def latest_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """`served` in the reference's columns."""
    latest = served(manifest)
    columns = ["video_id", "source_hash", "fusion_status", "text_present"]
    out = latest[columns].sort_values("video_id").reset_index(drop=True)
    return out.astype({"text_present": "int64"})
