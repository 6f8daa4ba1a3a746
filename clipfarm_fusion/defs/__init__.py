"""The Dagster skin over the run's stages (plan, fuse_chunk, commit): one module per kind of definition,
assembled in `definitions.py`.

Every process that loads the code location (the code server, the run and each step process of the
multiprocess, Celery and k8s executors) imports this package first, so this is where a native crash (a
segfault in Arrow or delta-rs) is made to print every thread's Python stack into the step's log instead
of ending the process without a word.
"""

import faulthandler
import sys

if not faulthandler.is_enabled() and sys.__stderr__ is not None:
    faulthandler.enable(file=sys.__stderr__)
