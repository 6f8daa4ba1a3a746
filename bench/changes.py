"""Change detection at scale: what `clipfarm-fusion detect-changes` costs per key listed.

Seeds a day of N videos (three small embeddings each) on a moto server, fuses it once, rewrites the
video embedding of 1% of them under the same key (a same-dims model swap), then times `changes.detect`
and counts its LIST requests. Prints requests and seconds per million keys; the requests are exact
(one LIST page per 1,000 keys), the seconds are moto's on this machine.

    python bench/changes.py --videos 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from common import BENCH_DIR, machine, moto_process, use_endpoint  # noqa: E402

from clipfarm_fusion.admin import changes  # noqa: E402
from clipfarm_fusion.config import FusionConfig  # noqa: E402
from clipfarm_fusion.core.layout import Layout  # noqa: E402
from clipfarm_fusion.devtools import synthetic  # noqa: E402
from clipfarm_fusion.run import pipeline  # noqa: E402
from clipfarm_fusion.stores import s3io  # noqa: E402

DAY = date(2026, 3, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=8, help="key ranges listed at once")
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/changes-<time>.json")
    args = parser.parse_args()
    with moto_process() as url, tempfile.TemporaryDirectory() as scratch:
        use_endpoint(url)
        client = s3io.make_client(64)
        day, objects = synthetic.make_day(args.videos, run_date=DAY, dim=8, mix={"full": 1.0})
        synthetic.seed(client, "changes-bench", "clipfarm", day, objects, threads=32)
        config = FusionConfig(bucket="changes-bench", strategies=("concat",), state_dir=Path(scratch))
        started = time.monotonic()
        pipeline.run(config, DAY, client=client)
        fused_s = time.monotonic() - started
        swapped = sorted(day.cases)[::100]
        body = synthetic.npy_bytes(np.full(8, 9.0, np.float32))
        for video_id in swapped:
            client.put_object(
                Bucket="changes-bench", Key=Layout("clipfarm").embedding_key("video", video_id), Body=body
            )
        found = changes.detect(
            client, "changes-bench", "clipfarm", "concat", threads=args.threads, request=False
        )
    assert sorted(found.changed) == swapped, "detection must find exactly the rewritten videos"
    per_million = 1e6 / max(found.keys_listed, 1)
    result = {
        "machine": machine(),
        "videos": args.videos,
        "keys_listed": found.keys_listed,
        "list_requests": found.list_requests,
        "seconds": round(found.seconds, 2),
        "requests_per_million_keys": round(found.list_requests * per_million),
        "seconds_per_million_keys": round(found.seconds * per_million, 1),
        "changed": len(found.changed),
        "first_fusion_seconds": round(fused_s, 1),
    }
    print(json.dumps(result, indent=2))
    out = args.json or BENCH_DIR / "results" / f"changes-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
