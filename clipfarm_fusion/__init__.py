"""clipfarm-fusion: daily embedding fusion on S3. `read_vectors` reads the published vectors back.

The export is resolved lazily (PEP 562) so that importing a pure module such as
`clipfarm_fusion.fuse` does not pull boto3 and pandas in with the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .readback import MissingVectorsWarning, read_vectors

__all__ = ["MissingVectorsWarning", "read_vectors"]


def __getattr__(name: str):
    if name in __all__:
        from . import readback

        return getattr(readback, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
