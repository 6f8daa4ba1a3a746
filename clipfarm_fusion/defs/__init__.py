"""The Dagster skin over `pipeline.run()`: one module per kind of definition, assembled in `definitions.py`."""
