"""Helpers of the linear-part tests: a dense reference of the features, configs, floors."""

from __future__ import annotations

import numpy as np
from conftest import tiny_config


def _dense_features(adj: np.ndarray, x: np.ndarray, sizes: list[int], fill: np.ndarray):
    """Reference: the three blocks from a dense adjacency (row i lists i's neighbours)."""
    n = x.shape[0]
    a = (adj > 0).astype(float)
    np.fill_diagonal(a, 0)
    two = ((a + a @ a) > 0).astype(float)
    np.fill_diagonal(two, 0)
    out = {}
    for name, reach in (("hop1", a), ("hop2", two)):
        deg = reach.sum(1)
        mean = np.where(deg[:, None] > 0, reach @ x / np.maximum(deg, 1)[:, None], fill)
        out[name] = mean
    loo = np.empty_like(x)
    start = 0
    for s in sizes:
        block = x[start : start + s]
        loo[start : start + s] = (
            (block.sum(0) - block) / (s - 1) if s > 1 else np.broadcast_to(fill, block.shape)
        )
        start += s
    out["sample"] = loo
    assert n == start
    return out


def _linear_cfg(**overrides):
    return tiny_config({"model.linear_part": True, **overrides}, n_epochs=2, seed=3, width=16)


_FLOOR_OF = {"hop1": "hop1", "hop1+hop2": "hop2", "hop1+hop2+sample": "hop2_sample"}
