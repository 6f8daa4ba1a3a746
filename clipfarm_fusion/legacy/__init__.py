"""The one-time import of seed-era files: the SQLite state file and the parquet manifest.

Installs from before the Delta tables kept a strategy's state in `fusion_<s>.sqlite` (mirrored to S3)
and its manifest in `fused/<s>/fused_manifest.parquet`. The first run that finds no table reads those
files once, and readers read them in place until then. The stores import this package only when a
table is missing, so a normal day's run never loads it.
"""
