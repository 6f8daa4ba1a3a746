-- The fusion state DB, one file per strategy (fusion_<strategy>.sqlite).
-- Same table and columns as the earlier plain script wrote, so its files are read and continued.
CREATE TABLE IF NOT EXISTS processed_items (
    video_id     TEXT PRIMARY KEY,
    source_hash  TEXT,
    processed_at TEXT,
    status       TEXT,
    error        TEXT,
    artifact_key TEXT,
    vector_id    TEXT,
    retry_count  INTEGER DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_processed_items_status ON processed_items(status);
