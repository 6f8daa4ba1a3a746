"""Run `clipfarm-fusion ARGS...` in this process and write its peak RSS (VmHWM, MB) to PATH.

`python bench/peak.py PATH ARGS...`. The high-water mark of /proc/self/status belongs to the image
started by exec, so it is this run's own peak: a child's `ru_maxrss` instead starts at its parent's size
when it is spawned (the harness, with its proxy buffering bodies, can be large).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    from clipfarm_fusion.cli.main import main as cli_main

    code = cli_main(sys.argv[2:])
    Path(sys.argv[1]).write_text(f"{vm_hwm_mb():.1f}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
