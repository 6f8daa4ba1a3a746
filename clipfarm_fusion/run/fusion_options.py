"""The run's fusion options: the config's, with the projection artifact loaded when strategy
`projection` is among the strategies. Every stage that needs them loads them (they hold a matrix, not
something to pass between steps)."""

from __future__ import annotations

from dataclasses import replace

from clipfarm_fusion.config import FusionConfig
from clipfarm_fusion.core.kernels import STRATEGIES, FusionOptions
from clipfarm_fusion.stores import projection_artifacts


def load(client, config: FusionConfig, strategies: tuple[str, ...]) -> FusionOptions:
    """The run's fusion options, with the projection artifact loaded when `projection` is among them
    (every stage that needs them loads them: they hold a matrix, not something to pass between steps)."""
    options = config.options
    if "projection" in strategies:
        options = replace(
            options, projection=projection_artifacts.load(client, config.projection_uri, STRATEGIES)
        )
    return options
