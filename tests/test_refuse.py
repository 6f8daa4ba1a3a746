"""Re-fusion on purpose, as a user runs it: `clipfarm-fusion refuse` over ids, dates or everything, its
progress line, a kill in the middle, and a `migrate-schema` whose older rows it replaces."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from datetime import date
from pathlib import Path

import numpy as np

from clipfarm_fusion import read_manifest, read_state
from clipfarm_fusion.read import verify
from clipfarm_fusion.read.vectors import read_vectors

from .test_upgrade import add_day

CLI = str(Path(sys.executable).parent / "clipfarm-fusion")
RUNNER = str(Path(__file__).with_name("crash_runner.py"))
DAY1, DAY2 = date(2026, 3, 1), date(2026, 3, 2)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)


def day_args(seeded, run_date: date, *extra: str) -> list[str]:
    return [
        "--run-date",
        run_date.isoformat(),
        "--bucket",
        seeded.bucket,
        "--strategy",
        "concat",
        "--state-dir",
        str(seeded.state_dir),
        "--shard-size",
        "8",
        *extra,
    ]


def fused_at(seeded) -> dict[str, str]:
    rows = read_manifest("concat", bucket=seeded.bucket, root=seeded.root)
    return dict(zip(rows["video_id"], rows["fused_at"], strict=True))


def progress(result: subprocess.CompletedProcess) -> tuple[int, int]:
    found = re.search(r"refuse concat: (\d+) of (\d+) videos fused again", result.stdout)
    assert found, result.stdout + result.stderr[-2000:]
    return int(found.group(1)), int(found.group(2))


def test_refuse_dates_fuses_that_range_again_and_converges(client, seed_day):
    seeded = seed_day(videos=16, mix={"full": 1.0}, run_date=DAY1)  # add_day writes 768-d days
    assert cli("run", *day_args(seeded, DAY1)).returncode == 0
    add_day(client, seeded, videos=6, prefix="new", run_date=DAY2)
    assert cli("run", *day_args(seeded, DAY2)).returncode == 0
    before = fused_at(seeded)
    first = cli("refuse", "--dates", "2026-03-01..2026-03-01", *day_args(seeded, DAY2))
    assert first.returncode == 0, first.stderr[-3000:]
    assert progress(first) == (16, 16) and "; done" in first.stdout
    after = fused_at(seeded)
    moved = {v for v in after if after[v] != before.get(v)}
    assert moved == {v for v in after if not v.startswith("new")}, "day one's videos, and only those"
    again = cli("refuse", "--dates", "2026-03-01..2026-03-01", *day_args(seeded, DAY2))
    assert again.returncode == 0 and "no videos chosen" in again.stdout, "they are now fused on day two"
    assert fused_at(seeded) == after
    assert verify.verify_strategy(client, seeded.bucket, seeded.root, "concat").ok


def test_refuse_all_continues_after_a_cap_and_after_a_kill_without_redoing(client, seed_day, tmp_path):
    seeded = seed_day(videos=24, mix={"full": 1.0}, run_date=DAY1, dim=8)
    assert cli("run", *day_args(seeded, DAY1)).returncode == 0
    capped = cli("refuse", "--all", *day_args(seeded, DAY1, "--max-items", "8"))
    assert capped.returncode == 0, capped.stderr[-3000:]
    assert progress(capped) == (8, 24) and "16 left: run the same refuse again" in capped.stdout
    done_first = fused_at(seeded)

    # killed right after the state commit: everything committed, nothing printed
    killed = subprocess.run(
        [
            sys.executable,
            RUNNER,
            "after-commit",
            "state/fusion_",
            "1",
            "--",
            "refuse",
            "--all",
            *day_args(seeded, DAY1),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    committed = fused_at(seeded)
    assert sum(committed[v] != done_first[v] for v in committed) == 16

    resumed = cli("refuse", "--all", *day_args(seeded, DAY1))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing re-fusion of 24 videos" in resumed.stderr
    assert progress(resumed) == (24, 24)
    assert fused_at(seeded) == committed, "what the killed run committed is not fused again"
    state = read_state("concat", bucket=seeded.bucket, root=seeded.root)
    assert (state["status"] == "success_full").all()
    assert verify.verify_strategy(client, seeded.bucket, seeded.root, "concat").ok


def test_after_migrate_schema_refuse_replaces_the_older_lock_rows(client, seed_day):
    seeded = seed_day(videos=10, mix={"full": 1.0}, run_date=DAY1, dim=8)
    assert cli("run", *day_args(seeded, DAY1)).returncode == 0
    migrated = cli("migrate-schema", "--strategy", "concat", "--bucket", seeded.bucket, "--l2-normalize")
    assert migrated.returncode == 0 and "refuse --strategy concat --all" in migrated.stdout
    refused = cli("refuse", "--all", *day_args(seeded, DAY1, "--l2-normalize"))
    assert refused.returncode == 0, refused.stderr[-3000:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no OlderLockWarning: one lock throughout
        ids, vectors, rows = read_vectors("concat", bucket=seeded.bucket, root=seeded.root)
    assert len(ids) == 10 and len(set(rows["lock_id"].to_pylist())) == 1
    assert np.allclose(np.linalg.norm(vectors[:, :8], axis=1), 1.0), "the new lock's option holds"


def test_refuse_needs_one_strategy_and_one_choice(seed_day, tmp_path):
    seeded = seed_day(videos=4, mix={"full": 1.0}, dim=8)
    missing_choice = cli("refuse", "--bucket", seeded.bucket, "--strategy", "concat")
    assert missing_choice.returncode == 2 and "one of the arguments" in missing_choice.stderr
    no_strategy = cli("refuse", "--all", "--bucket", seeded.bucket)
    assert no_strategy.returncode == 2 and "refuse needs one --strategy" in no_strategy.stderr
    empty = tmp_path / "ids.txt"
    empty.write_text("# nothing\n")
    no_ids = cli("refuse", "--ids", str(empty), "--bucket", seeded.bucket, "--strategy", "concat")
    assert no_ids.returncode == 2 and "no video ids in it" in no_ids.stderr
