"""The `clipfarm-fusion` command line: `main` builds the parser and maps errors to exit codes, `reading`
holds the commands that read or tend what runs published, `argtypes` the flag value parsers. `entry` is
the console script."""

from .main import entry

__all__ = ["entry"]
