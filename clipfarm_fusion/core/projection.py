"""Pure: frozen, versioned projections. A base strategy's vector `x`, then `x @ P (+ b)`, then optionally
a frozen MLP (`relu`/`gelu` between layers); the bytes of an `.npz` artifact parsed (without pickle) and
built. The artifact's sha256 is its `projection_id`, locked in schema.json and written in every manifest
row, so vectors from two different projections are never mixed silently. Reading and writing artifacts,
local or on S3, is `projection_artifacts`.

Artifact arrays: `P (D_in, D_out)`, optional `b (D_out,)`, optional `mlp_w0, mlp_b0, mlp_w1, ...`,
`activation` (0-d string, default relu) and `base_strategy` (0-d string, default concat). `D_in` is
the base strategy's width without the mask; the mask is appended after projecting.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, field

import numpy as np

from clipfarm_fusion.errors import ConfigError

ACTIVATIONS = ("relu", "gelu")


@dataclass(frozen=True, eq=False)
class Projection:
    projection_id: str
    base_strategy: str
    matrix: np.ndarray
    bias: np.ndarray | None
    layers: tuple[tuple[np.ndarray, np.ndarray], ...] = field(default_factory=tuple)
    activation: str = "relu"

    @property
    def input_dim(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def output_dim(self) -> int:
        return int(self.layers[-1][0].shape[1] if self.layers else self.matrix.shape[1])


def _activate(values: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(values, 0.0)
    return 0.5 * values * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (values + 0.044715 * values**3)))


def apply(projection: Projection, batch: np.ndarray, out: np.ndarray) -> None:
    """`out[:] = MLP(batch @ P + b)`, in float64 and rounded once to float32, so a row's result does not
    depend on which other rows share its batch."""
    values = batch.astype(np.float64) @ projection.matrix.astype(np.float64)
    if projection.bias is not None:
        values += projection.bias
    for weights, bias in projection.layers:
        values = _activate(values, projection.activation) @ weights.astype(np.float64) + bias
    out[:] = values


def parse(body: bytes, location: str, strategies: dict) -> Projection:
    """Artifact bytes -> Projection; ConfigError naming the location and the problem."""

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"projection artifact {location}: {problem}")

    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable artifact is the same config error
        raise bad(f"not a numeric .npz ({exc})") from None
    if "P" not in arrays or arrays["P"].ndim != 2:
        raise bad("needs a 2-D array P (D_in, D_out)")
    base = str(arrays.get("base_strategy", np.array("concat")))
    activation = str(arrays.get("activation", np.array("relu")))
    if base not in strategies or base == "projection":
        raise bad(f"base_strategy {base!r} is not a registered base strategy")
    if activation not in ACTIVATIONS:
        raise bad(f"activation {activation!r}: use one of {', '.join(ACTIVATIONS)}")
    numeric = {k: v for k, v in arrays.items() if k not in ("base_strategy", "activation")}
    if any(v.dtype.kind not in "fiu" or not np.isfinite(v).all() for v in numeric.values()):
        raise bad("weights must be finite numbers")
    matrix = arrays["P"].astype(np.float32)
    bias = arrays["b"].astype(np.float32) if "b" in arrays else None
    if bias is not None and bias.shape != (matrix.shape[1],):
        raise bad(f"b has shape {bias.shape}, expected ({matrix.shape[1]},)")
    layers, width = [], matrix.shape[1]
    while f"mlp_w{len(layers)}" in arrays:
        weights = arrays[f"mlp_w{len(layers)}"].astype(np.float32)
        layer_bias = arrays.get(f"mlp_b{len(layers)}", np.zeros(weights.shape[-1])).astype(np.float32)
        if weights.ndim != 2 or weights.shape[0] != width or layer_bias.shape != (weights.shape[1],):
            raise bad(f"mlp layer {len(layers)} does not fit: weights {weights.shape}, input width {width}")
        layers.append((weights, layer_bias))
        width = weights.shape[1]
    return Projection(
        projection_id=hashlib.sha256(body).hexdigest(),
        base_strategy=base,
        matrix=matrix,
        bias=bias,
        layers=tuple(layers),
        activation=activation,
    )


def build(kind: str, dim: int, sample: np.ndarray | None, input_dim: int, base: str, seed: int) -> bytes:
    """Artifact bytes: `gaussian` is a seeded N(0, 1/dim) matrix; `pca` the top `dim` principal axes of
    `sample` (numpy SVD), with `b = -mean @ P` so `x @ P + b` projects the centred vector."""
    if kind == "gaussian":
        rng = np.random.default_rng(seed)
        arrays = {"P": (rng.standard_normal((input_dim, dim)) / math.sqrt(dim)).astype(np.float32)}
    elif kind == "pca":
        if sample is None or sample.shape[0] < dim:
            raise ConfigError(
                f"pca to {dim} dims needs at least {dim} fused vectors; fuse more or lower --dim"
            )
        centred = sample.astype(np.float64)
        mean = centred.mean(axis=0)
        _, _, axes = np.linalg.svd(centred - mean, full_matrices=False)
        signs = np.sign(axes[:dim, np.argmax(np.abs(axes[:dim]), axis=1)].diagonal())  # deterministic signs
        matrix = (axes[:dim].T * signs).astype(np.float32)
        arrays = {"P": matrix, "b": (-mean @ matrix).astype(np.float32)}
    else:
        raise ConfigError(f"unknown projection kind {kind!r}: use pca or gaussian")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, base_strategy=np.array(base), activation=np.array("relu"), allow_pickle=False)
    return buffer.getvalue()
