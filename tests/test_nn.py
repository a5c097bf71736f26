"""Tests of interscale.nn: local encoders, the global attention encoder and the decoders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from interscale.nn import (
    GCNEncoder,
    GINEncoder,
    GlobalEncoder,
    LinearDecoder,
    LinearLSEDecoder,
    NonLinearDecoder,
    linear_weight,
    make_decoder,
    make_local_encoder,
)
from interscale.nn._attention import KeyMask, blocked_attention

SCOPES = ["full", "neighbourhood", "long_range"]


# ----------------------------------------------------------------------------------- helpers
def _random_batch(sizes, p_edge, seed, n_features=16, dtype=torch.float64):
    """Random embeddings plus a symmetric, loop-free, within-sample random graph."""
    g = torch.Generator().manual_seed(seed)
    ptr = torch.tensor([0, *np.cumsum(sizes).tolist()], dtype=torch.long)
    edges = []
    for b, s in enumerate(sizes):
        a = torch.rand(s, s, generator=g) < p_edge
        a = torch.triu(a, diagonal=1)
        a = a | a.T
        src, dst = a.nonzero().T
        edges.append(torch.stack([src, dst]) + ptr[b])
    edge_index = torch.cat(edges, 1) if edges else torch.zeros(2, 0, dtype=torch.long)
    h = torch.randn(int(ptr[-1]), n_features, generator=g, dtype=dtype)
    return h, ptr, edge_index


def _allowed(scope, s, src, dst):
    """Boolean [S+1, S+1] allowed-key matrix (CLS last), built independently of the package."""
    allowed = torch.ones(s + 1, s + 1, dtype=torch.bool)
    adj = torch.zeros(s, s, dtype=torch.bool)
    adj[dst, src] = True  # row = query i, column = key j for an edge j -> i
    eye = torch.eye(s, dtype=torch.bool)
    if scope == "full":
        allowed[:s, :s] = ~eye
    elif scope == "neighbourhood":
        allowed[:s, :s] = adj
    else:
        allowed[:s, :s] = ~adj & ~eye
    return allowed


def _reference(enc: GlobalEncoder, h, ptr, edge_index, scope, norm_first=True):
    """Per-sample dense reference with torch.nn.TransformerEncoderLayer and a boolean mask."""
    e = enc.n_embed
    ref_layers = []
    for layer in enc.transformer_encoder.layers:
        ref = nn.TransformerEncoderLayer(
            e,
            enc.n_heads,
            layer.linear1.out_features,
            dropout=0.0,
            batch_first=True,
            norm_first=norm_first,
            dtype=h.dtype,
        )
        ref.load_state_dict(layer.state_dict())
        ref_layers.append(ref)
    cells, cls, weights = [], [], []
    for b in range(len(ptr) - 1):
        a, z = int(ptr[b]), int(ptr[b + 1])
        keep = (edge_index[1] >= a) & (edge_index[1] < z)
        allowed = _allowed(scope, z - a, edge_index[0, keep] - a, edge_index[1, keep] - a)
        x = enc.norm_input(torch.cat([h[a:z], enc.cls_embedding[None]]))[None]
        for i, ref in enumerate(ref_layers):
            if i == len(ref_layers) - 1:
                y = ref.norm1(x) if norm_first else x
                _, w = ref.self_attn(y, y, y, attn_mask=~allowed, need_weights=True)
                weights.append(w[0])
            x = ref(x, src_mask=~allowed)
        x = enc.transformer_encoder.norm(x[0])
        cells.append(x[:-1])
        cls.append(x[-1])
    return torch.cat(cells), torch.stack(cls), ref_layers, weights


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


# ------------------------------------------------------------------------- parameter counts
def test_parameter_count_matches_published_model():
    local = GCNEncoder(88, n_embed=16, hidden_dim=256, num_layers=2)
    glob = GlobalEncoder(n_embed=16, n_heads=4, dim_feedforward=256, num_layers=2)
    decoders = [make_decoder("linear", 16, 88) for _ in range(2)]

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(local) == 28_864
    assert count(glob.transformer_encoder.layers[0]) == 9_616
    torch_layer = nn.TransformerEncoderLayer(16, 4, 256, norm_first=True)
    assert count(glob.transformer_encoder.layers[0]) == count(torch_layer)
    assert glob.cls_embedding.shape == (16,)
    assert count(glob) == 2 * 9_616 + 16 + 32 + 32
    assert [count(d) for d in decoders] == [1_496, 1_496]
    assert count(local) + count(glob) + sum(count(d) for d in decoders) == 51_168


def test_layer_state_dict_is_torch_compatible():
    glob = GlobalEncoder()
    ref = nn.TransformerEncoderLayer(16, 4, 256, norm_first=True)
    assert set(glob.transformer_encoder.layers[0].state_dict()) == set(ref.state_dict())


# ------------------------------------------------------------------------------ exactness
@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    p_edge=st.floats(0.0, 0.5),
    block_size=st.integers(1, 17),
    scope=st.sampled_from(SCOPES),
    kernel=st.sampled_from(["flash", "math"]),
    seed=st.integers(0, 10_000),
)
def test_global_encoder_matches_dense_reference_float64(
    sizes, p_edge, block_size, scope, kernel, seed
):
    torch.manual_seed(seed)
    enc = GlobalEncoder(attention=scope, block_size=block_size, kernel=kernel).double().eval()
    h, ptr, ei = _random_batch(sizes, p_edge, seed)
    h.requires_grad_(True)
    out = enc(h, ptr, ei)
    ref_cells, ref_cls, ref_layers, _ = _reference(enc, h, ptr, ei, scope)
    torch.testing.assert_close(out.embedding, ref_cells, atol=1e-10, rtol=0)
    torch.testing.assert_close(out.cls, ref_cls, atol=1e-10, rtol=0)

    g = torch.Generator().manual_seed(seed + 1)
    w_cells = torch.randn(out.embedding.shape, generator=g, dtype=h.dtype)
    w_cls = torch.randn(out.cls.shape, generator=g, dtype=h.dtype)
    shared = [h, enc.cls_embedding, *enc.norm_input.parameters()]
    shared += list(enc.transformer_encoder.norm.parameters())
    ours = shared + [p for layer in enc.transformer_encoder.layers for p in layer.parameters()]
    theirs = shared + [p for layer in ref_layers for p in layer.parameters()]
    g_ours = _grads((out.embedding * w_cells).sum() + (out.cls * w_cls).sum(), ours)
    g_ref = _grads((ref_cells * w_cells).sum() + (ref_cls * w_cls).sum(), theirs)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("norm_first", [True, False])
def test_global_encoder_float32_matches_reference(scope, norm_first):
    torch.manual_seed(3)
    enc = GlobalEncoder(attention=scope, block_size=64, norm_first=norm_first).eval()
    h, ptr, ei = _random_batch([150, 1, 97, 260], 0.04, 11, dtype=torch.float32)
    h.requires_grad_(True)
    out = enc(h, ptr, ei)
    ref_cells, ref_cls, _, _ = _reference(enc, h, ptr, ei, scope, norm_first=norm_first)
    torch.testing.assert_close(out.embedding, ref_cells, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.cls, ref_cls, atol=1e-5, rtol=0)
    (gh,) = _grads(out.embedding.square().sum(), [h])
    (gr,) = _grads(ref_cells.square().sum(), [h])
    torch.testing.assert_close(gh, gr, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["flash", "math"])
def test_blocked_attention_core_matches_explicit_softmax(kernel):
    g = torch.Generator().manual_seed(0)
    s = 300
    q, k, v = (torch.randn(1, 4, s + 1, 4, generator=g, dtype=torch.float64) for _ in range(3))
    src = torch.randint(0, s, (900,), generator=g)
    dst = torch.randint(0, s, (900,), generator=g)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    order = torch.argsort(dst, stable=True)
    src, dst = src[order], dst[order]
    nbr_ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(dst, minlength=s)])
    mask = KeyMask(s, torch.cumsum(nbr_ptr, 0), src)
    qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = blocked_attention(qs, ks, vs, mask, block_size=37, kernel=kernel)
    qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
    allowed = _allowed("long_range", s, src, dst)
    scores = (qr @ kr.transpose(-1, -2) / 2.0).masked_fill(~allowed, -math.inf)
    ref = torch.softmax(scores, -1) @ vr
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    for a, b in zip(
        _grads((out * w).sum(), [qs, ks, vs]), _grads((ref * w).sum(), [qr, kr, vr]), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


# -------------------------------------------------------------------------- attention output
@pytest.mark.parametrize("scope", SCOPES)
def test_attention_weights_match_dense_reference(scope):
    torch.manual_seed(5)
    enc = GlobalEncoder(attention=scope, block_size=16).double().eval()
    h, ptr, ei = _random_batch([23, 40, 2], 0.2, 7)
    with torch.no_grad():
        out = enc(h, ptr, ei, need_attention=True, attention_top_k=1000)
        top = enc(h, ptr, ei, need_attention=True, attention_top_k=3)
        _, _, _, ref_w = _reference(enc, h, ptr, ei, scope)
    n = h.shape[0]
    dense = torch.zeros(n, n, dtype=h.dtype)
    cls_ref = torch.zeros(n, dtype=h.dtype)
    for b, w in enumerate(ref_w):
        a, z = int(ptr[b]), int(ptr[b + 1])
        dense[a:z, a:z] = w[:-1, :-1]
        cls_ref[a:z] = w[-1, :-1]
    ours = out.attention.to_sparse_coo(n).to_dense()
    torch.testing.assert_close(ours, dense, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.cls_attention, cls_ref, atol=1e-12, rtol=0)
    # rows never leave their sample; top-k keeps the k largest entries of every row
    batch = torch.repeat_interleave(torch.arange(3), ptr[1:] - ptr[:-1])
    assert torch.equal(batch[top.attention.rows], batch[top.attention.cols])
    counts = torch.bincount(top.attention.rows, minlength=n)
    expected = torch.clamp((dense > 0).sum(1), max=3)
    assert torch.equal(counts, expected)
    kth = torch.topk(dense, 3, dim=1).values[:, -1]
    assert bool((top.attention.values >= kth[top.attention.rows] - 1e-15).all())


def test_no_attention_unless_requested():
    enc = GlobalEncoder()
    h, ptr, _ = _random_batch([5], 0.0, 0, dtype=torch.float32)
    out = enc(h, ptr)
    assert out.attention is None and out.cls_attention is None


# ----------------------------------------------------------------------------- equivariance
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("local", ["GCN", "GIN"])
def test_permutation_equivariance(scope, local):
    torch.manual_seed(0)
    sizes = [60, 45]
    enc_local = make_local_encoder(local, 30, 16, 32, 2, 0.1).eval()
    enc = GlobalEncoder(attention=scope, block_size=16).eval()
    _, ptr, ei = _random_batch(sizes, 0.1, 2)
    x = torch.randn(int(ptr[-1]), 30)
    # permute the cells of each sample separately
    g = torch.Generator().manual_seed(1)
    perm = torch.cat([torch.randperm(s, generator=g) + int(ptr[b]) for b, s in enumerate(sizes)])
    inv = torch.argsort(perm)
    x_p, ei_p = x[perm], inv[ei]
    with torch.no_grad():
        h, h_p = enc_local(x, ei), enc_local(x_p, ei_p)
        out, out_p = enc(h, ptr, ei), enc(h_p, ptr, ei_p)
    torch.testing.assert_close(h_p, h[perm], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_p.embedding, out.embedding[perm], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_p.cls, out.cls, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scope", SCOPES)
def test_samples_do_not_interact(scope):
    torch.manual_seed(0)
    enc = GlobalEncoder(attention=scope, block_size=8).eval()
    h, ptr, ei = _random_batch([20, 30], 0.2, 4, dtype=torch.float32)
    h2 = h.clone()
    h2[20:] = torch.randn(30, 16)
    with torch.no_grad():
        a, b = enc(h, ptr, ei), enc(h2, ptr, ei)
        alone = enc(h[:20], ptr[:2], ei[:, ei[1] < 20])
    assert torch.equal(a.embedding[:20], b.embedding[:20])
    assert torch.equal(a.cls[0], b.cls[0])
    torch.testing.assert_close(alone.embedding, a.embedding[:20], atol=1e-6, rtol=0)


# ------------------------------------------------------------------- size and determinism
def test_large_sample_no_truncation_forward_backward():
    torch.manual_seed(0)
    s = 5000
    enc = GlobalEncoder(attention="full")
    h = torch.randn(s, 16, requires_grad=True)
    out = enc(h, torch.tensor([0, s]))
    assert out.embedding.shape == (s, 16)
    assert bool(torch.isfinite(out.embedding).all())
    out.embedding.square().mean().backward()
    assert bool(torch.isfinite(h.grad).all())
    assert bool((h.grad.abs().sum(1) > 0).all())  # every cell takes part in the loss


@pytest.mark.parametrize("scope", SCOPES)
def test_training_step_is_deterministic_with_seed(scope):
    _, ptr, ei = _random_batch([70, 90], 0.1, 1, dtype=torch.float32)
    x = torch.randn(int(ptr[-1]), 25, generator=torch.Generator().manual_seed(0))

    def run():
        torch.manual_seed(123)
        local = GCNEncoder(25, hidden_dim=32)
        glob = GlobalEncoder(attention=scope, block_size=32)
        dec = make_decoder("nonlinear", 16, 25, hidden_dims=(32,))
        out = glob(local(x, ei), ptr, ei)
        loss = (dec(out.embedding) - x).square().mean() + out.cls.square().mean()
        loss.backward()
        grads = [p.grad.clone() for m in (local, glob, dec) for p in m.parameters()]
        return out.embedding.detach(), grads

    e1, g1 = run()
    e2, g2 = run()
    assert torch.equal(e1, e2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


def test_eval_inference_is_repeatable():
    torch.manual_seed(0)
    enc = GlobalEncoder().eval()
    h, ptr, _ = _random_batch([40, 10], 0.0, 0, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(enc(h, ptr).embedding, enc(h, ptr).embedding)


# ---------------------------------------------------------------------------- validation
def test_global_encoder_rejects_bad_input():
    enc = GlobalEncoder(attention="neighbourhood")
    h, ptr, ei = _random_batch([5, 6], 0.5, 0, dtype=torch.float32)
    with pytest.raises(ValueError, match="edge_index"):
        enc(h, ptr)
    with pytest.raises(ValueError, match="ptr"):
        enc(h, torch.tensor([0, 5, 10]), ei)
    with pytest.raises(TypeError, match="ptr"):
        enc(h, ptr.float(), ei)
    with pytest.raises(ValueError, match=r"\[N, 16\]"):
        enc(h[:, :8], ptr, ei)
    with pytest.raises(ValueError, match="different samples"):
        enc(h, ptr, torch.tensor([[0], [7]]))
    with pytest.raises(ValueError, match="outside"):
        enc(h, ptr, torch.tensor([[0], [11]]))
    with pytest.raises(ValueError, match="attention"):
        GlobalEncoder(attention="global")
    with pytest.raises(ValueError, match="divisible"):
        GlobalEncoder(n_embed=10, n_heads=4)
    with pytest.raises(ValueError, match="activation"):
        GlobalEncoder(activation="tanh")


# ------------------------------------------------------------------------------ local GNNs
def test_gcn_encoder_matches_dense_formula():
    torch.manual_seed(0)
    n, g_in = 40, 12
    enc = GCNEncoder(g_in, n_embed=8, hidden_dim=20, num_layers=3).eval()
    _, _, ei = _random_batch([n], 0.15, 9)
    x = torch.randn(n, g_in)
    a = torch.zeros(n, n)
    a[ei[1], ei[0]] = 1.0
    a = a + torch.eye(n)  # GCNConv default: add self loops, symmetric normalisation
    d = a.sum(1).rsqrt()
    a_hat = d[:, None] * a * d[None, :]

    def ln(t, mod):
        return nn.functional.layer_norm(t, t.shape[-1:], mod.weight, mod.bias, mod.eps)

    convs = [m for m in enc.layers if hasattr(m, "lin")]
    norms = [m for m in enc.layers if isinstance(m, nn.LayerNorm)]
    hid = x
    for conv, norm in zip(convs[:-1], norms[:-1], strict=True):
        hid = nn.functional.gelu(ln(a_hat @ conv.lin(hid) + conv.bias, norm))
    main = ln(a_hat @ convs[-1].lin(hid) + convs[-1].bias, norms[-1])
    skip = ln(enc.input_proj(x), enc.input_norm)
    expected = nn.functional.layer_norm(main + skip, (8,))
    with torch.no_grad():
        torch.testing.assert_close(enc(x, ei), expected, atol=1e-5, rtol=0)
    assert norms[-1].weight is None and enc.final_norm.weight is None


def test_local_encoders_shapes_and_errors():
    x = torch.randn(10, 7)
    ei = torch.tensor([[0, 1], [1, 0]])
    for name, cls in [("GCN", GCNEncoder), ("GIN", GINEncoder)]:
        enc = make_local_encoder(name, 7, 4, 8, 1, 0.0)
        assert isinstance(enc, cls)
        assert enc(x, ei).shape == (10, 4)
        with pytest.raises(ValueError, match=r"\[N, 7\]"):
            enc(x[:, :3], ei)
    with pytest.raises(ValueError, match="GAT"):
        make_local_encoder("GAT", 7, 4, 8, 1, 0.0)
    with pytest.raises(ValueError, match="num_layers"):
        GCNEncoder(7, num_layers=0)


# ------------------------------------------------------------------------------- decoders
def test_decoders_against_numpy():
    torch.manual_seed(0)
    z = torch.randn(9, 16, dtype=torch.float64)
    lin = make_decoder("linear", 16, 88).double()
    assert isinstance(lin, LinearDecoder)
    w = linear_weight(lin)
    assert w.shape == (88, 16) and w is lin.weight
    np.testing.assert_allclose(
        lin(z).detach().numpy(),
        z.numpy() @ w.detach().numpy().T + lin.decoder.bias.detach().numpy(),
        atol=1e-12,
    )
    lse = make_decoder("linear-lse", 16, 88).double()
    assert isinstance(lse, LinearLSEDecoder)
    wl = lse.weight.detach().numpy()  # (n_embed, n_output), as published
    contrib = z.numpy()[:, :, None] * wl[None]
    m = contrib.max(1)
    expected = m + np.log(np.exp(contrib - m[:, None, :]).sum(1)) + lse.bias.detach().numpy()
    np.testing.assert_allclose(lse(z).detach().numpy(), expected, atol=1e-12)
    assert torch.equal(linear_weight(lse), lse.weight.t())
    mlp = make_decoder("nonlinear", 16, 88, hidden_dims=(32, 24), dropout=0.2)
    assert isinstance(mlp, NonLinearDecoder)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 24), (24, 88)]
    assert mlp(z.float()).shape == (9, 88)
    with pytest.raises(TypeError, match="NonLinearDecoder"):
        linear_weight(mlp)
    with pytest.raises(ValueError, match="decoder kind"):
        make_decoder("mlp", 16, 88)
