"""Package data: ships this folder as `clipfarm_fusion.dagster_home` (see pyproject.toml and clipfarm_fusion/devtools/package_data.py).

A regular package, not a namespace one, so that setuptools' editable finder (`pip install -e`) resolves
`clipfarm_fusion.dagster_home` to this folder.
"""
