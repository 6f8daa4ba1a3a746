"""Pure: the fusion strategies, vectorised over a batch. `(N,Dv),(N,Da),(N,Dt),(N,)` -> `(N,F)` float32.

One registry, `STRATEGIES`: a strategy is a named, pure, vectorised kernel with a declared output width,
and adding one is one entry. The CLI, Dagster and the schema lock all read the names from here.
Deterministic, no learned weights: the same inputs and options give bit-identical output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from clipfarm_fusion.core import projection as projections
from clipfarm_fusion.errors import ConfigError

MODALITY_COUNT = 3


@dataclass(frozen=True)
class FusionOptions:
    """Options that change the vectors, so each is recorded in schema.json and locked with it."""

    mask: bool = True  # append the text-presence mask m (1.0 text present, 0.0 placeholder)
    l2_normalize: bool = False  # scale each modality to unit L2 norm first (a zero vector stays zero)
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # video, audio, text (weighted_pool)
    projection: projections.Projection | None = None  # the loaded artifact (strategy `projection`)


Kernel = Callable[[list[np.ndarray], np.ndarray, FusionOptions, np.ndarray], None]


def _start_padded(out: np.ndarray, first: np.ndarray) -> None:
    """`out` (uninitialised) becomes `first` zero-padded to its width."""
    out[:, : first.shape[1]] = first
    out[:, first.shape[1] :] = 0.0


def _concat(parts: list[np.ndarray], present: np.ndarray, options: FusionOptions, out: np.ndarray) -> None:
    offset = 0
    for part in parts:
        out[:, offset : offset + part.shape[1]] = part
        offset += part.shape[1]


def _sum_pool(parts: list[np.ndarray], present: np.ndarray, options: FusionOptions, out: np.ndarray) -> None:
    """Zero-pad each modality to the widest and add, in the fixed order video + audio + text."""
    _start_padded(out, parts[0])
    for part in parts[1:]:
        width = part.shape[1]
        np.add(out[:, :width], part, out=out[:, :width])


def _max_pool(parts: list[np.ndarray], present: np.ndarray, options: FusionOptions, out: np.ndarray) -> None:
    """Zero-pad each modality to the widest and take the elementwise max (padding counts as 0)."""
    widest = out.shape[1]
    _start_padded(out, parts[0])
    for part in parts[1:]:
        width = part.shape[1]
        np.maximum(out[:, :width], part, out=out[:, :width])
        if width < widest:
            np.maximum(out[:, width:widest], 0.0, out=out[:, width:widest])


def _weighted_sum(
    parts: list[np.ndarray], present: np.ndarray, weights: tuple[float, float, float], out: np.ndarray
) -> None:
    """Zero-padded sum of `weights[m] * modality`, renormalised per row over the modalities present
    (video and audio always are; a text placeholder takes no weight, so it does not dilute)."""
    row_weights = np.empty((out.shape[0], MODALITY_COUNT), dtype=np.float32)
    row_weights[:, 0], row_weights[:, 1] = weights[0], weights[1]
    row_weights[:, 2] = np.where(present, np.float32(weights[2]), np.float32(0.0))
    total = row_weights.sum(axis=1, dtype=np.float32)
    np.divide(row_weights, total[:, None], out=row_weights, where=total[:, None] > 0)
    out[:] = 0.0
    for index, part in enumerate(parts):
        width = part.shape[1]
        out[:, :width] += row_weights[:, index : index + 1] * part


def _mean_pool(parts: list[np.ndarray], present: np.ndarray, options: FusionOptions, out: np.ndarray) -> None:
    """Zero-padded mean over the modalities present: a text placeholder does not dilute the mean.
    Summed, then divided by the count (2 or 3), which rounds once where weights of 1/3 would twice."""
    _sum_pool(parts, present, options, out)
    out /= np.where(present, np.float32(3.0), np.float32(2.0))[:, None]


def _weighted_pool(
    parts: list[np.ndarray], present: np.ndarray, options: FusionOptions, out: np.ndarray
) -> None:
    _weighted_sum(parts, present, options.weights, out)


def _project(parts: list[np.ndarray], present: np.ndarray, options: FusionOptions, out: np.ndarray) -> None:
    """The artifact's base strategy (without the mask), then its frozen projection."""
    artifact = options.projection
    base = STRATEGIES[artifact.base_strategy]
    fused = np.empty((out.shape[0], artifact.input_dim), dtype=np.float32)
    base.kernel(parts, present, options, fused)
    projections.apply(artifact, fused, out)


def _projection_width(dv: int, da: int, dt: int, options: FusionOptions) -> int:
    artifact = options.projection
    if artifact is None:
        raise ValueError("strategy projection needs FusionOptions.projection, the loaded artifact")
    base_width = STRATEGIES[artifact.base_strategy].width(dv, da, dt, options)
    if base_width != artifact.input_dim:
        raise ConfigError(
            f"projection {artifact.projection_id[:12]} takes {artifact.input_dim}-d {artifact.base_strategy} "
            f"vectors but these embeddings give {base_width}-d; build a projection for them (make-projection)"
        )
    return artifact.output_dim


def _widest(dv: int, da: int, dt: int, options: FusionOptions) -> int:
    return max(dv, da, dt)


@dataclass(frozen=True)
class Strategy:
    """A named, pure, vectorised fusion with its declared output width (before the mask)."""

    name: str
    width: Callable[[int, int, int, FusionOptions], int]
    kernel: Kernel
    uses_weights: bool = False


STRATEGIES: dict[str, Strategy] = {
    strategy.name: strategy
    for strategy in (
        Strategy("concat", lambda dv, da, dt, options: dv + da + dt, _concat),
        Strategy("sum_pool", _widest, _sum_pool),
        Strategy("max_pool", _widest, _max_pool),
        Strategy("mean_pool", _widest, _mean_pool),
        Strategy("weighted_pool", _widest, _weighted_pool, uses_weights=True),
        Strategy("projection", _projection_width, _project),
    )
}
DEFAULT_STRATEGIES: tuple[str, ...] = ("concat", "sum_pool", "max_pool")


def fused_dim(strategy: str, video_dim: int, audio_dim: int, text_dim: int, options: FusionOptions) -> int:
    return STRATEGIES[strategy].width(video_dim, audio_dim, text_dim, options) + int(options.mask)


def l2_normalized(batch: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; an all-zero row stays zero (never NaN)."""
    norms = np.linalg.norm(batch, axis=1, keepdims=True).astype(np.float32)
    return np.divide(batch, norms, out=np.zeros_like(batch), where=norms > 0)


def fuse(
    strategy: str,
    video: np.ndarray,
    audio: np.ndarray,
    text: np.ndarray,
    text_present: np.ndarray,
    options: FusionOptions = FusionOptions(),
) -> np.ndarray:
    """Fuse a batch. Placeholder rows must carry zeros in `text`; `text_present` `(N,)` becomes the mask."""
    rows = video.shape[0]
    if not (audio.shape[0] == text.shape[0] == len(text_present) == rows):
        raise ValueError("video, audio, text and text_present must have the same number of rows")
    spec = STRATEGIES[strategy]
    parts = [part.astype(np.float32, copy=False) for part in (video, audio, text)]
    if options.l2_normalize:
        parts = [l2_normalized(part) for part in parts]
    present = np.asarray(text_present, dtype=bool)
    width = spec.width(*(part.shape[1] for part in parts), options)
    out = np.empty((rows, width + int(options.mask)), dtype=np.float32)
    spec.kernel(parts, present, options, out[:, :width])
    if options.mask:
        out[:, width] = present.astype(np.float32)
    return out
