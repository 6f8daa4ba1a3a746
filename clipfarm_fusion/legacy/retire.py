"""Retiring a seed-era file once its rows are in a table: it moves to `<name>.imported`, byte for byte.

Off its path, it can never be imported a second time (not even after the tables are deleted on
purpose: the next run then starts afresh), and a reader still pointed at the old path fails loudly
instead of reading rows that stopped changing at the import. The copy stays for audits and rollback.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)
IMPORTED_SUFFIX = ".imported"


def retire(client, bucket: str, where: str) -> str:
    """Move the imported file at `where` (an s3:// URI in `bucket`, or a local path) to its
    `.imported` name; returns the new location. A copy then a delete: a crash in between leaves both,
    and the table, which exists by then, is what every run reads."""
    if where.startswith("s3://"):
        key = where.removeprefix(f"s3://{bucket}/")
        client.copy_object(
            Bucket=bucket, Key=key + IMPORTED_SUFFIX, CopySource={"Bucket": bucket, "Key": key}
        )
        client.delete_object(Bucket=bucket, Key=key)
        moved = f"s3://{bucket}/{key}{IMPORTED_SUFFIX}"
    else:
        path = Path(where)
        moved = str(path.replace(path.with_name(path.name + IMPORTED_SUFFIX)))
    log.info("seed-era file %s imported and moved to %s: it is never read again", where, moved)
    return moved
