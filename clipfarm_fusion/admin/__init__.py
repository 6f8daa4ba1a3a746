"""Upkeep of what runs published: `sweep` (gc of orphan shards), `maintenance` (compact, checkpoint,
vacuum the tables), `migrate` (accept new dims or options deliberately)."""
