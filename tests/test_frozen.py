"""A frozen checkpoint of format version 1 loads forever; seeded CPU training never drifts.

The fixture in ``tests/data/frozen_v1`` was written by ``tests/data/make_frozen_checkpoint.py``
before the model/train refactor. Everywhere, training and the stored checkpoint's outputs must
agree with the stored tensors to float32 rounding. Bit-identity is asserted on the machine kinds
whose digests ``meta.json`` records (``bit_exact``: processor, torch build, CPU kernels, torch
threads, and the C compiler and flags of InterScale's CPU attention kernel, built with
``-march=native``; the same AVX512 build rounds differently on Intel and AMD processors, and tox
sets two threads); ``make_frozen_checkpoint.py --record-machine`` adds a kind.
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

_spec = importlib.util.spec_from_file_location("make_frozen", DATA / "make_frozen_checkpoint.py")
make_frozen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_frozen)

# the digests taken on this machine kind, or None where none were recorded (float32 rounding only)
BIT_EXACT = next(
    (e for e in META["bit_exact"] if e["machine"] == make_frozen.machine_fingerprint()), None
)


def _assert_close(actual: np.ndarray, expected: np.ndarray, what: str, atol: float = 1e-5) -> None:
    assert actual.shape == expected.shape, what
    if expected.dtype.kind in "iu":
        np.testing.assert_array_equal(actual, expected, err_msg=what)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=atol, err_msg=what)


def test_fingerprint_names_the_processor_and_the_threads():
    machine = make_frozen.machine_fingerprint()
    assert machine["torch_threads"] == torch.get_num_threads()
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["cpu"], "no processor description: bit-exact digests could not be keyed"


def test_frozen_checkpoint_loads_and_reproduces_its_outputs():
    adata = make_frozen.frozen_adata()
    make_frozen.setup(adata)
    model = CombinedModel.load(FROZEN, adata, verbose=False)
    assert model.is_trained_
    model.get_model_output(adata)
    expected = np.load(FROZEN / "outputs.npz")
    actual = make_frozen.outputs(adata)
    assert sorted(actual) == sorted(expected.files)
    for name, values in actual.items():
        _assert_close(values, expected[name], name)
    if BIT_EXACT is not None:
        assert make_frozen.outputs_digest(actual) == BIT_EXACT["outputs_sha256"]


@pytest.mark.parametrize("cls", [CombinedModel, LocalModel, GlobalModel], ids=lambda c: c.__name__)
def test_seeded_training_gives_the_frozen_weights(cls):
    adata = make_frozen.frozen_adata()
    make_frozen.setup(adata, cls)
    model = cls(adata, make_frozen.frozen_config())
    model.train(progress_bar=False)
    if BIT_EXACT is not None:
        assert make_frozen.state_digest(model.module) == BIT_EXACT["state_sha256"][cls.__name__]
    if cls is CombinedModel:
        stored = torch.load(next(FROZEN.glob("*.pt")), weights_only=True)["state_dict"]
        trained = model.module.state_dict()
        assert list(trained) == list(stored)
        # Asserted: the attention's in-projection bias, which holds the key bias, to 1e-4 (the
        # key bias has no true gradient, since a softmax ignores a shift shared by all keys, so
        # Adam turns rounding noise there into steps of about 1e-5 per epoch), every other
        # weight to 1e-6 (rtol 1e-4)
        for key, tensor in stored.items():
            atol = 1e-4 if _is_key_bias(key) else 1e-6
            _assert_close(trained[key].numpy(), tensor.numpy(), key, atol=atol)


def _is_key_bias(name: str) -> bool:
    return name.endswith("self_attn.in_proj_bias")


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
