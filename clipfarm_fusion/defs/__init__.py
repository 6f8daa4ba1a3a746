"""The Dagster skin over the run's stages (plan, fuse_chunk, commit): one module per kind of definition,
assembled in `definitions.py`."""
