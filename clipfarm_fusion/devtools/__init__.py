"""For trying and testing the job without AWS: synthetic days, an embedded moto S3 server, `demo`, the
Dagster UI on a seeded bucket (`dev`), and the package's data files."""
