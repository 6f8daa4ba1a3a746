"""The stages of a run: `plan` (read the day, decide the work list, stage its chunks), `chunk` (fuse one
chunk: `fetch` the embeddings, write shards), `commit` (publish per strategy under its lease), with
`staging` for the objects between stages, `summary` for what a run reports and `pipeline` running the
three in one process."""
