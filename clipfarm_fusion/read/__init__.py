"""What users read back: the published tables (`tables`: read_manifest, read_state), the fused vectors
(`vectors`: read_vectors) and `verify`, which checks every pointer and that state and manifest agree."""
