"""What lives in the bucket and how it is read and written: S3 access (`s3io`), the Delta tables
(`lake`, `manifest`, `state`), the schema lock, shards, the commit lease, the text stage's SQLite DB
(`text_state`) and projection artifacts."""
