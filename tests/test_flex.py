"""FlexAttention path (interscale.nn._flex): packing, mask_mod, outputs, gradients and dispatch.

FlexAttention runs eagerly on CPU (forward only in PyTorch; the CPU backward is the module's own
chunked one), so everything here runs without a GPU; ``tests/test_cuda.py`` covers the fused kernel.
"""

from __future__ import annotations

import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from interscale.nn import GlobalEncoder
from interscale.nn import _global as global_module
from interscale.nn._attention import blocked_attention
from interscale.nn._flex import (
    MIN_HEAD_DIM,
    PackedLayout,
    bucket_length,
    flex_attention_packed,
    flex_available,
    resolve_kernel,
)
from interscale.nn._global import _SampleLayout
from interscale.nn._masks import KeyMask, dense_scope_mask

pytestmark = pytest.mark.skipif(not flex_available(), reason="no torch FlexAttention")

SCOPES = ["full", "long_range"]


def _batch(seed: int, sizes=(7, 1, 23, 12), p_edge: float = 0.2):
    """ptr and a random (not necessarily symmetric) within-sample graph with duplicate edges."""
    gen = torch.Generator().manual_seed(seed)
    ptr = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()])
    edges = []
    for a, b in zip(ptr[:-1].tolist(), ptr[1:].tolist(), strict=True):
        s = b - a
        adj = torch.rand(s, s, generator=gen) < p_edge
        adj.fill_diagonal_(False)
        src, dst = adj.nonzero().T
        edges.append(torch.stack([src, dst]) + a)
    ei = torch.cat(edges, 1)
    ei = torch.cat([ei, ei[:, :3]], 1)  # duplicates are allowed
    return ptr, ei


def _dense_reference_mask(ptr: Tensor, ei: Tensor, scope: str, layout: PackedLayout):
    """Packed [L, L] mask built from the per-sample dense reference (padding: its own block)."""
    sample_layout = _SampleLayout(ptr, int(ptr[-1]), scope, None if scope == "full" else ei)
    length = layout.padded_length
    ref = torch.zeros(length, length, dtype=torch.bool)
    for b, mask in enumerate(sample_layout.masks):
        a, z = layout.starts[b], layout.starts[b + 1]
        ref[a:z, a:z] = dense_scope_mask(mask)
    ref[layout.length :, layout.length :] = True
    return ref, sample_layout


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_mod_matches_dense_scope_mask(scope, seed):
    sizes = [[7, 1, 23, 12], [40, 3], [5]][seed]
    ptr, ei = _batch(seed, sizes)
    layout = PackedLayout(ptr, None if scope == "full" else ei)
    pos = torch.arange(layout.padded_length)
    got = layout.dense_rows(pos, pos)
    ref, _ = _dense_reference_mask(ptr, ei, scope, layout)
    assert torch.equal(got, ref)
    # every query row sees at least one key (no NaN rows), real rows never see padding
    assert bool(got.any(1).all())
    assert not bool(got[: layout.length, layout.length :].any())


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("sizes", [[7, 1, 23, 12], [300, 2, 140, 90], [257], [128, 127]])
def test_block_lists_cover_the_mask(scope, sizes):
    """Tiles from the sample ranges vs FlexAttention's own create_block_mask (full evaluation)."""
    from torch.nn.attention.flex_attention import create_block_mask

    ptr, ei = _batch(5, sizes, p_edge=0.05)
    layout = PackedLayout(ptr, None if scope == "full" else ei)
    partial, full = layout.block_lists()
    length = layout.padded_length
    ref = create_block_mask(layout.mask_mod, None, None, length, length, device="cpu")
    ref_any = ref.to_dense()[0, 0].bool()
    ref_full = torch.zeros_like(ref_any)
    n_full = ref.full_kv_num_blocks[0, 0]
    for i, count in enumerate(n_full.tolist()):
        ref_full[i, ref.full_kv_indices[0, 0, i, :count]] = True
    assert not bool((partial & full).any())
    assert bool(((partial | full) >= ref_any).all())  # every tile holding an allowed pair is kept
    assert bool((full <= ref_full).all())  # a tile marked full is entirely allowed
    if scope == "full":
        assert torch.equal(partial | full, ref_any)
    # the BlockMask built from the tiles agrees with create_block_mask's
    assert torch.equal(
        layout.block_mask(torch.device("cpu")).to_dense()[0, 0].bool(), partial | full
    )


def test_packing_order_and_inverse():
    ptr, _ = _batch(0)
    layout = PackedLayout(ptr)
    n, n_samples = int(ptr[-1]), ptr.numel() - 1
    tokens = torch.arange(n + n_samples, dtype=torch.float64).unsqueeze(1)
    packed = layout.pack(tokens)
    assert packed.shape == (layout.padded_length, 1)
    assert torch.equal(layout.unpack(packed), tokens)
    for b in range(n_samples):
        a, z = layout.starts[b], layout.starts[b + 1]
        cells = torch.arange(int(ptr[b]), int(ptr[b + 1]), dtype=torch.float64)
        assert torch.equal(packed[a : z - 1, 0], cells)  # the cells of sample b, in order
        assert packed[z - 1, 0] == n + b  # then its CLS
        assert bool(layout.is_cls[z - 1]) and not bool(layout.is_cls[a : z - 1].any())
    assert not bool(packed[layout.length :].any())  # zero padding


def test_bucket_length():
    assert bucket_length(1) == 128
    assert bucket_length(128) == 128
    assert bucket_length(129) == 256
    for length in [1000, 4319, 43_832, 1_000_017]:
        bucketed = bucket_length(length)
        assert length <= bucketed < length * 1.25
        assert bucketed % 128 == 0
    # few buckets (4 per doubling): lengths 5,000-10,000 fall into 5 of them
    assert len({bucket_length(x) for x in range(5_000, 10_001)}) == 5


def _qkv(length: int, d: int, dtype, seed: int, n_heads: int = 4):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(1, n_heads, length, d, generator=gen, dtype=dtype).requires_grad_()
        for _ in range(3)
    ]


def _dense_attention(q, k, v, allowed):
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.matmul(torch.softmax(scores, -1), v)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_flex_matches_dense_softmax_forward_and_gradients(scope, dtype, tol):
    ptr, ei = _batch(3, sizes=[17, 2, 30, 9])
    layout = PackedLayout(ptr, None if scope == "full" else ei)
    ref_mask, _ = _dense_reference_mask(ptr, ei, scope, layout)
    q, k, v = _qkv(layout.padded_length, 4, dtype, seed=5)
    real = slice(0, layout.length)
    gen = torch.Generator().manual_seed(9)
    grad_out = torch.randn(1, 4, layout.length, 4, generator=gen, dtype=dtype)

    out = flex_attention_packed(q, k, v, layout)
    got = torch.autograd.grad(out[:, :, real], (q, k, v), grad_out)
    ref_out = _dense_attention(q, k, v, ref_mask)
    ref = torch.autograd.grad(ref_out[:, :, real], (q, k, v), grad_out)

    torch.testing.assert_close(out[:, :, real], ref_out[:, :, real], atol=tol, rtol=tol)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g[:, :, real], r[:, :, real], atol=tol, rtol=tol)


@pytest.mark.parametrize("scope", SCOPES)
def test_head_dim_padding_does_not_change_results(scope):
    ptr, ei = _batch(4)
    layout = PackedLayout(ptr, None if scope == "full" else ei)
    q, k, v = _qkv(layout.padded_length, 4, torch.float64, seed=1)
    padded = flex_attention_packed(q, k, v, layout, min_head_dim=MIN_HEAD_DIM)
    plain = flex_attention_packed(q, k, v, layout, min_head_dim=4)
    assert padded.shape == plain.shape == q.shape
    with torch.no_grad():  # leaves that require gradients, under no_grad: forward only
        torch.testing.assert_close(flex_attention_packed(q, k, v, layout), padded.detach())
    torch.testing.assert_close(padded, plain, atol=1e-13, rtol=1e-13)
    g_padded = torch.autograd.grad(padded.sum(), (q, k, v))
    g_plain = torch.autograd.grad(plain.sum(), (q, k, v))
    for a, b in zip(g_padded, g_plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=1e-13)


@pytest.mark.parametrize("scope", SCOPES)
def test_bucket_padding_does_not_change_outputs(scope):
    ptr, ei = _batch(6)
    ei = None if scope == "full" else ei
    exact, bucketed = PackedLayout(ptr, ei, bucket=False), PackedLayout(ptr, ei)
    assert exact.padded_length == exact.length < bucketed.padded_length
    n_tokens = exact.length
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randn(n_tokens, 3, 4, 4, generator=gen, dtype=torch.float64)
    outs = []
    for layout in (exact, bucketed):
        q, k, v = (t.unsqueeze(0) for t in layout.pack(tokens).permute(1, 2, 0, 3))
        out = flex_attention_packed(q, k, v, layout)
        outs.append(layout.unpack(out[0].transpose(0, 1)))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-13, rtol=1e-13)


@pytest.mark.parametrize("scope", SCOPES)
def test_encoder_flex_matches_blocked_kernel_with_weights(scope):
    torch.manual_seed(0)
    ptr, ei = _batch(7, sizes=[30, 0, 45, 15])  # an empty sample keeps its CLS
    n = int(ptr[-1])
    enc = GlobalEncoder(attention=scope, block_size=16).double().eval()
    h = torch.randn(n, 16, dtype=torch.float64, requires_grad=True)
    results = {}
    for kernel in ("auto", "flex"):
        enc.kernel = kernel
        out = enc(h, ptr, ei, need_attention=True, attention_top_k=5)
        (grad,) = torch.autograd.grad(out.embedding.sum() + out.cls.pow(2).sum(), h)
        results[kernel] = (out, grad)
    (ref, g_ref), (got, g_got) = results["auto"], results["flex"]
    torch.testing.assert_close(got.embedding, ref.embedding, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got.cls, ref.cls, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(g_got, g_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got.cls_attention, ref.cls_attention, atol=1e-12, rtol=1e-12)
    assert torch.equal(got.attention.rows, ref.attention.rows)
    assert torch.equal(got.attention.cols, ref.attention.cols)
    torch.testing.assert_close(got.attention.values, ref.attention.values, atol=1e-12, rtol=0)


def test_resolve_kernel():
    cpu = torch.zeros(1)
    cuda = SimpleNamespace(device=torch.device("cuda"))  # only the device is read
    old = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(False)  # other tests may have left it on
        assert resolve_kernel("auto", cpu) == "auto"  # today's CPU path
        assert resolve_kernel("flex", cpu) == "flex"
        assert resolve_kernel("math", cuda) == "math"
        assert resolve_kernel("auto", cuda) == "flex"
        torch.use_deterministic_algorithms(True)
        assert resolve_kernel("auto", cuda) == "auto"  # deterministic: the blocked path
        assert resolve_kernel("flex", cuda) == "flex"  # forced stays forced
    finally:
        torch.use_deterministic_algorithms(old)


@pytest.mark.parametrize(("kernel", "expect_flex"), [("auto", False), ("flex", True)])
def test_encoder_dispatch_on_cpu(monkeypatch, kernel, expect_flex):
    calls = []
    real = global_module.flex_attention_packed

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(global_module, "flex_attention_packed", spy)
    ptr, ei = _batch(8, sizes=[10, 6])
    enc = GlobalEncoder(attention="long_range", kernel=kernel).train()
    out = enc(torch.randn(int(ptr[-1]), 16), ptr, ei)
    out.embedding.sum().backward()
    assert bool(calls) == expect_flex
    assert len(calls) == (2 if expect_flex else 0)  # once per layer


def test_kernel_names():
    with pytest.raises(ValueError, match="kernel must be one of"):
        GlobalEncoder(kernel="triton")
    q = torch.zeros(1, 1, 3, 4)
    with pytest.raises(ValueError, match="kernel must be one of"):
        blocked_attention(q, q, q, KeyMask(2), kernel="flex")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_flex_matches_eager_and_reuses_the_bucket():
    """The mask_mod and the tile lists compile (inductor's CPU template; CUDA uses Triton), and a
    second layout of the same bucket and table width runs without recompiling (about 20 s)."""
    from torch.nn.attention.flex_attention import flex_attention

    torch._dynamo.reset()
    compiled = torch.compile(flex_attention, dynamic=False)
    ptr, ei = _batch(9, sizes=[300, 10, 390], p_edge=0.02)
    ptr2 = torch.tensor([0, 290, 320, 700])
    gen = torch.Generator().manual_seed(0)
    layouts = [PackedLayout(p, ei) for p in (ptr, ptr2)]
    assert layouts[0].padded_length == layouts[1].padded_length
    assert layouts[0].nbr.shape == layouts[1].nbr.shape
    length = layouts[0].padded_length
    for i, layout in enumerate(layouts):
        q, k, v = (torch.randn(1, 4, length, MIN_HEAD_DIM, generator=gen) for _ in range(3))
        block_mask = layout.block_mask(torch.device("cpu"))
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            out = compiled(q, k, v, block_mask=block_mask, scale=1 / math.sqrt(MIN_HEAD_DIM))
        ref = flex_attention_packed(q, k, v, layout, min_head_dim=MIN_HEAD_DIM)
        real = slice(0, layout.length)
        torch.testing.assert_close(out[:, :, real], ref[:, :, real], atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()
