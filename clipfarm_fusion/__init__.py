"""clipfarm-fusion: daily embedding fusion on S3. `read_manifest` and `read_state` read what runs
published, `read_failures` a day's failed and waiting items; `read_vectors` reads the fused vectors back.

The export is resolved lazily (PEP 562) so that importing a pure module such as
`clipfarm_fusion.core.kernels` does not pull boto3 and pandas in with the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .read.tables import read_failures, read_manifest, read_state
    from .read.vectors import MissingVectorsWarning, read_vectors

__all__ = ["MissingVectorsWarning", "read_failures", "read_manifest", "read_state", "read_vectors"]
_HOMES = {"MissingVectorsWarning": "read.vectors", "read_vectors": "read.vectors"}


def __getattr__(name: str):
    if name in __all__:
        from importlib import import_module

        return getattr(import_module(f".{_HOMES.get(name, 'read.tables')}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
