"""A frozen checkpoint of format version 1 loads forever; seeded CPU training never drifts.

The fixture in ``tests/data/frozen_v1`` was written by ``tests/data/make_frozen_checkpoint.py``
before the model/train refactor. Bit-identity is asserted on the CPU kind that wrote it (the
vectorised kernels differ between AVX2 and AVX512) with the same number of torch threads (tox
sets two); elsewhere the same run must agree to float32 rounding.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from interscale.model import CombinedModel, GlobalModel, LocalModel

DATA = Path(__file__).parent / "data"
FROZEN = DATA / "frozen_v1"
META = json.loads((FROZEN / "meta.json").read_text())
# reductions split over threads round differently: bit-identity needs the same thread count
SAME_CPU = (
    torch.backends.cpu.get_cpu_capability() == META["cpu_capability"]
    and torch.get_num_threads() == META["torch_threads"]
)

_spec = importlib.util.spec_from_file_location("make_frozen", DATA / "make_frozen_checkpoint.py")
make_frozen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_frozen)


def _assert_same(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.shape == expected.shape, what
    if SAME_CPU:
        np.testing.assert_array_equal(actual, expected, err_msg=what)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5, err_msg=what)


def test_frozen_checkpoint_loads_and_reproduces_its_outputs():
    adata = make_frozen.frozen_adata()
    make_frozen.setup(adata)
    model = CombinedModel.load(FROZEN, adata, verbose=False)
    assert model.is_trained_
    model.get_model_output(adata)
    expected = np.load(FROZEN / "outputs.npz")
    for name, actual in make_frozen.outputs(adata).items():
        _assert_same(actual, expected[name], name)


@pytest.mark.parametrize("cls", [CombinedModel, LocalModel, GlobalModel], ids=lambda c: c.__name__)
def test_seeded_training_gives_the_frozen_weights(cls):
    adata = make_frozen.frozen_adata()
    make_frozen.setup(adata, cls)
    model = cls(adata, make_frozen.frozen_config())
    model.train(progress_bar=False)
    if SAME_CPU:
        assert make_frozen.state_digest(model.module) == META["state_sha256"][cls.__name__]
    if cls is CombinedModel:
        stored = torch.load(next(FROZEN.glob("*.pt")), weights_only=True)["state_dict"]
        trained = model.module.state_dict()
        assert list(trained) == list(stored)
        for key, tensor in stored.items():
            _assert_same(trained[key].numpy(), tensor.numpy(), key)


def test_training_and_outputs_with_deferred_expression_are_bit_identical(monkeypatch):
    """Graphs that densify their expression per batch (large layers) train to the same bits."""
    import interscale.graphs._plan as plan

    runs = {}
    for threshold in (plan.DEFER_DENSE_BYTES, 0):  # 0: every plan defers its graphs' x
        monkeypatch.setattr(plan, "DEFER_DENSE_BYTES", threshold)
        adata = make_frozen.frozen_adata()
        make_frozen.setup(adata)
        model = CombinedModel(adata, make_frozen.frozen_config())
        assert all(g.deferred == (threshold == 0) for g in model._graphs(adata))
        model.train(progress_bar=False)
        model.get_model_output(adata)
        runs[threshold] = (make_frozen.state_digest(model.module), make_frozen.outputs(adata))
    (digest_dense, out_dense), (digest_deferred, out_deferred) = runs.values()
    assert digest_deferred == digest_dense
    for name, values in out_dense.items():
        np.testing.assert_array_equal(out_deferred[name], values, err_msg=name)
