"""Pure: the fusion strategies, vectorised over a batch. `(N,Dv),(N,Da),(N,Dt),(N,)` -> `(N,F)` float32.

Deterministic, no learned weights: the same inputs and config give bit-identical output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _place(out: np.ndarray, parts: list[np.ndarray]) -> None:
    offset = 0
    for part in parts:
        out[:, offset : offset + part.shape[1]] = part
        offset += part.shape[1]


def _start_padded(out: np.ndarray, first: np.ndarray) -> None:
    """`out` (uninitialised) becomes `first` zero-padded to its width."""
    out[:, : first.shape[1]] = first
    out[:, first.shape[1] :] = 0.0


def _concat(video: np.ndarray, audio: np.ndarray, text: np.ndarray, out: np.ndarray) -> None:
    _place(out, [video, audio, text])


def _sum_pool(video: np.ndarray, audio: np.ndarray, text: np.ndarray, out: np.ndarray) -> None:
    """Zero-pad each modality to the widest and add, in the fixed order video + audio + text."""
    _start_padded(out, video)
    for part in (audio, text):
        width = part.shape[1]
        np.add(out[:, :width], part, out=out[:, :width])


def _max_pool(video: np.ndarray, audio: np.ndarray, text: np.ndarray, out: np.ndarray) -> None:
    """Zero-pad each modality to the widest and take the elementwise max (padding counts as 0)."""
    widest = out.shape[1]
    _start_padded(out, video)
    for part in (audio, text):
        width = part.shape[1]
        np.maximum(out[:, :width], part, out=out[:, :width])
        if width < widest:
            np.maximum(out[:, width:widest], 0.0, out=out[:, width:widest])


@dataclass(frozen=True)
class Strategy:
    """A named, pure, vectorised fusion with its declared output width (before the mask)."""

    name: str
    width: Callable[[int, int, int], int]
    kernel: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]


STRATEGIES: dict[str, Strategy] = {
    "concat": Strategy("concat", lambda dv, da, dt: dv + da + dt, _concat),
    "sum_pool": Strategy("sum_pool", lambda dv, da, dt: max(dv, da, dt), _sum_pool),
    "max_pool": Strategy("max_pool", lambda dv, da, dt: max(dv, da, dt), _max_pool),
}


def fused_dim(strategy: str, video_dim: int, audio_dim: int, text_dim: int, mask: bool) -> int:
    return STRATEGIES[strategy].width(video_dim, audio_dim, text_dim) + int(mask)


def fuse(
    strategy: str,
    video: np.ndarray,
    audio: np.ndarray,
    text: np.ndarray,
    text_present: np.ndarray,
    mask: bool = True,
) -> np.ndarray:
    """Fuse a batch. Placeholder rows must carry zeros in `text`; `text_present` `(N,)` becomes the mask."""
    rows = video.shape[0]
    if not (audio.shape[0] == text.shape[0] == len(text_present) == rows):
        raise ValueError("video, audio, text and text_present must have the same number of rows")
    spec = STRATEGIES[strategy]
    width = spec.width(video.shape[1], audio.shape[1], text.shape[1])
    out = np.empty((rows, width + int(mask)), dtype=np.float32)
    spec.kernel(
        video.astype(np.float32, copy=False),
        audio.astype(np.float32, copy=False),
        text.astype(np.float32, copy=False),
        out[:, :width],
    )
    if mask:
        out[:, width] = np.asarray(text_present, dtype=np.float32)
    return out
