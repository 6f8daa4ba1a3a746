"""The pure core: the rules and the math, no I/O. Gating policy, the work list of a run, the latest-row
rule, the known-id index, the fusion kernels and projections, drift, `.npy` decoding, the horizon
parser, the storage layout. Nothing here imports boto3, deltalake, Dagster or SQLAlchemy
(tests/test_layering.py checks every module)."""
