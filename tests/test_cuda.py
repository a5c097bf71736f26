"""CUDA runs agree with CPU runs: forward passes, training, held-out outputs.

Skipped where no CUDA device exists (CI); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import organoids, tiny_config

from interscale.graphs import GraphBatch
from interscale.model import CombinedModel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")

# TF32 matmuls would make CUDA differ from CPU by ~1e-3; these tests compare float32 maths.
ATOL = 2e-4


@pytest.fixture(autouse=True)
def _exact_float32():
    old_matmul = torch.backends.cuda.matmul.allow_tf32
    old_cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old_matmul
    torch.backends.cudnn.allow_tf32 = old_cudnn


def _adata(n_samples: int = 4, cells=(300, 500)):
    """Organoids of seed 3, set up for CombinedModel (also used by the subprocess below)."""
    return organoids(n_samples, cells, 3, setup=True)


def _cfg(scope: str = "full", **overrides):
    """Two epochs, seed 11, MSE, no dropout, the default widths and dataset name."""
    fixed = {
        "model.global_component.parameters.attention": scope,
        "model.global_component.parameters.dropout_global": 0.0,
        "model.local_component.parameters.dropout_local": 0.0,
    }
    return tiny_config(
        {**fixed, **overrides}, n_epochs=2, seed=11, loss="MSELoss", name=None, width=None
    )


@pytest.mark.parametrize("scope", ["full", "neighbourhood", "long_range"])
def test_forward_and_gradients_match_cpu(scope):
    adata = _adata()
    model = CombinedModel(adata, _cfg(scope))
    graphs = model._graphs(adata)
    batch = GraphBatch.collate(graphs[:2])
    mask = torch.zeros(batch.n_cells, dtype=torch.bool)
    mask[::7] = True

    results = {}
    for device in ("cpu", "cuda"):
        module = copy.deepcopy(model.module).to(device)
        module.train()
        b = batch.to(device)
        out = module(b.x, b.edge_index, b.ptr, mask=mask.to(device), features=b.features)
        loss = (out.y_local[mask.to(device)] - b.x[mask.to(device)]).pow(2).mean() + (
            out.y_global[mask.to(device)] - b.x[mask.to(device)]
        ).pow(2).mean()
        loss.backward()
        grads = {
            n: p.grad.detach().cpu() for n, p in module.named_parameters() if p.grad is not None
        }
        results[device] = (out.local_emb.detach().cpu(), out.global_emb.detach().cpu(), grads)

    cpu, gpu = results["cpu"], results["cuda"]
    torch.testing.assert_close(gpu[0], cpu[0], atol=ATOL, rtol=1e-3)
    torch.testing.assert_close(gpu[1], cpu[1], atol=ATOL, rtol=1e-3)
    assert cpu[2].keys() == gpu[2].keys()
    for name, grad in cpu[2].items():
        torch.testing.assert_close(gpu[2][name], grad, atol=1e-3, rtol=1e-2, msg=name)


def test_training_on_cuda_and_outputs_match_cpu_inference():
    adata = _adata()
    model = CombinedModel(adata, _cfg())
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    history = model.train(accelerator="cuda", progress_bar=False)
    assert model.device.type == "cuda"
    assert np.isfinite(history["train_loss"]).all()
    after = model.module.state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before)

    gpu_out = model.get_model_output(adata.copy(), masked=True)
    model.module.to("cpu")
    cpu_out = model.get_model_output(adata.copy(), masked=True)
    for key in ("_local_emb", "_global_emb"):
        np.testing.assert_allclose(gpu_out.obsm[key], cpu_out.obsm[key], atol=ATOL, rtol=1e-3)
    for key in ("_y_pred_local", "_y_pred_global"):
        np.testing.assert_allclose(gpu_out.layers[key], cpu_out.layers[key], atol=ATOL, rtol=1e-3)


_DETERMINISTIC_RUN = """
import hashlib, sys
sys.path.insert(0, {tests!r})
import interscale as isc
from test_cuda import CombinedModel, _adata, _cfg
isc.tl.set_full_reproducibility(5)
adata = _adata(n_samples=3)
model = CombinedModel(adata, _cfg())
model.train(accelerator="cuda", progress_bar=False)
model.get_model_output(adata)
digest = hashlib.sha256()
for name, value in sorted(model.module.state_dict().items()):
    digest.update(name.encode())
    digest.update(value.detach().cpu().numpy().tobytes())
for key in ("_local_emb", "_global_emb"):
    digest.update(adata.obsm[key].tobytes())
print("DIGEST", digest.hexdigest())
"""


def test_cuda_training_is_bit_identical_under_full_reproducibility(tmp_path):
    """Deterministic kernels (set in a fresh process, before cuBLAS starts) repeat exactly."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "run.py"
    script.write_text(_DETERMINISTIC_RUN.format(tests=str(Path(__file__).parent)))
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8", PYTHONHASHSEED="0")
    digests = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        digests.append([line for line in done.stdout.splitlines() if line.startswith("DIGEST")])
    assert digests[0] and digests[0] == digests[1]


def _flex_batch(sizes=(60, 25, 90), p_edge=0.1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ptr = torch.tensor([0, *np.cumsum(sizes).tolist()])
    edges = []
    for a, b in zip(ptr[:-1].tolist(), ptr[1:].tolist(), strict=True):
        adj = torch.rand(b - a, b - a, generator=gen) < p_edge
        adj = adj | adj.T
        adj.fill_diagonal_(False)
        edges.append(adj.nonzero().T + a)
    return ptr, torch.cat(edges, 1)


@pytest.mark.parametrize("scope", ["full", "long_range"])
def test_flex_path_gradients_match_cpu_float64(scope, monkeypatch):
    """``auto`` runs FlexAttention on CUDA; outputs and gradients agree with CPU float64."""
    from interscale.nn import GlobalEncoder
    from interscale.nn import _global as global_module

    calls = []
    real = global_module.flex_attention_packed

    def spy(*args, **kwargs):
        calls.append(args[0].device.type)
        return real(*args, **kwargs)

    monkeypatch.setattr(global_module, "flex_attention_packed", spy)
    torch.manual_seed(0)
    ptr, ei = _flex_batch()
    enc = GlobalEncoder(attention=scope, dropout=0.0).double()
    h = torch.randn(int(ptr[-1]), 16, dtype=torch.float64)
    results = {}
    for device, dtype in (("cpu", torch.float64), ("cuda", torch.float32)):
        module = copy.deepcopy(enc).to(device, dtype)
        x = h.to(device, dtype).requires_grad_()
        out = module(x, ptr.to(device), ei.to(device), need_attention=True)
        loss = out.embedding.pow(2).sum() + out.cls.sum()
        loss.backward()
        grads = {n: p.grad.double().cpu() for n, p in module.named_parameters()}
        grads["input"] = x.grad.double().cpu()
        results[device] = (out.embedding.double().cpu(), out.cls_attention.double().cpu(), grads)
    assert calls == ["cuda", "cuda"]  # CPU kept the blocked kernel; CUDA used flex in 2 layers
    cpu, gpu = results["cpu"], results["cuda"]
    torch.testing.assert_close(gpu[0], cpu[0], atol=ATOL, rtol=1e-3)
    torch.testing.assert_close(gpu[1], cpu[1], atol=ATOL, rtol=1e-3)
    for name, grad in cpu[2].items():
        torch.testing.assert_close(gpu[2][name], grad, atol=1e-3, rtol=1e-2, msg=name)


def test_auto_kernel_picks_flex_on_cuda_but_not_under_determinism():
    from interscale.nn._flex import flex_available, resolve_kernel

    q = torch.zeros(1, device="cuda")
    assert resolve_kernel("auto", q) == ("flex" if flex_available() else "auto")
    old = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert resolve_kernel("auto", q) == "auto"
    finally:
        torch.use_deterministic_algorithms(old)


def test_flex_bucket_reuses_compiled_kernel():
    """Two steps whose lengths fall in one bucket run the same compiled kernel (no recompile)."""
    from interscale.nn._flex import PackedLayout, bucket_length, flex_attention_packed

    assert bucket_length(1000) == bucket_length(1010)
    outs = []
    for i, n in enumerate((997, 1007)):
        layout = PackedLayout(torch.tensor([0, n // 3, n], device="cuda"))
        assert layout.padded_length == bucket_length(1000)
        q = torch.randn(1, 4, layout.padded_length, 4, device="cuda")
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            outs.append(flex_attention_packed(q, q, q, layout))
    assert all(bool(torch.isfinite(o).all()) for o in outs)
