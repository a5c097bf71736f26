"""FlexAttention on CUDA, checked on the CPU: length buckets, recompile budget, loud fallbacks and
the kernel that ``auto`` picks (interscale.nn._flex_compile, interscale.nn._kernel_choice)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from interscale.config import load_config
from interscale.nn import _flex
from interscale.nn import _flex_compile as fc
from interscale.nn._attention import flash_kernel_available
from interscale.nn._cpu_kernel import cpu_kernel_available
from interscale.nn._flex import MIN_HEAD_DIM, PackedLayout, bucket_length, flex_available
from interscale.nn._kernel_choice import attention_kernel, describe_attention

needs_flex = pytest.mark.skipif(not flex_available(), reason="no torch FlexAttention")

#: Positions of one sample of the main dataset per step (cells + its CLS token).
MAIN_LENGTHS = range(1_641, 4_320)


@pytest.fixture
def fresh_state(monkeypatch):
    """Empty fallback records (module state) for one test."""
    monkeypatch.setattr(fc, "_warned", [])
    monkeypatch.setattr(fc, "_broken", [])
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_main_dataset_buckets_fit_the_recompile_limit():
    buckets = {bucket_length(n) for n in MAIN_LENGTHS}
    assert sorted(buckets) == [1792, 2048, 2560, 3072, 3584, 4096, 5120]
    # one training and one evaluation graph per bucket, both under the limit of the call
    assert 2 * len(buckets) <= fc.RECOMPILE_LIMIT
    assert 2 * len(buckets) > 8  # dynamo's default limit would not have held them


def test_bucket_padding_is_bounded():
    lengths = sorted({*range(1, 5_000), *range(5_000, 3_000_000, 997), 2**20, 2**20 + 1})
    previous = 0
    for n in lengths:
        padded = bucket_length(n)
        assert padded >= n and padded % 128 == 0
        assert padded >= previous  # monotone: a longer sequence never gets a smaller bucket
        previous = padded
        if n > 512:
            assert (padded - n) / n < 0.25, n
        else:
            assert padded - n < 128, n
    assert bucket_length(2**20) == 2**20  # powers of two are their own bucket
    with pytest.raises(ValueError, match="length must be positive"):
        bucket_length(0)


def _qkv(layout: PackedLayout, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shape = (1, 2, layout.padded_length, MIN_HEAD_DIM)
    return [torch.randn(shape, generator=gen) for _ in range(3)]


@needs_flex
def test_compile_failure_warns_once_and_runs_eager(monkeypatch, fresh_state):
    flex = fc._flex_module()
    monkeypatch.setattr(flex, "_WARNINGS_SHOWN", set())  # PyTorch's own warn-once record
    attempts = []

    def broken(*args, **kwargs):
        attempts.append(1)
        raise RuntimeError("simulated inductor failure\nsecond line")

    monkeypatch.setattr(_flex, "_compiled_flex", lambda: broken)
    layout = PackedLayout(torch.tensor([0, 40, 100]))
    q, k, v = _qkv(layout)
    scale = 1 / math.sqrt(4)
    reference = _flex._flex_call(q, k, v, layout, scale, lse=False, compiled=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _flex._flex_call(q, k, v, layout, scale, lse=False, compiled=True)
        second = _flex._flex_call(q, k, v, layout, scale, lse=False, compiled=True)
    torch.testing.assert_close(first, reference, atol=0, rtol=0)
    torch.testing.assert_close(second, reference, atol=0, rtol=0)
    loud = [w for w in caught if issubclass(w.category, fc.FlexFallbackWarning)]
    assert len(loud) == 1  # once, not per call
    message = str(loud[0].message)
    assert "compiling it failed" in message and "simulated inductor failure" in message
    assert "second line" not in message and "whole score matrix" in message
    assert attempts == [1]  # the compiled path is off after a compile error
    assert fc.fallback_reasons() == ["error"]
    # PyTorch's "without torch.compile" warning is not filtered on the fallback path
    assert any("without torch.compile" in str(w.message) for w in caught)


@needs_flex
def test_cpu_eager_call_hides_but_keeps_pytorchs_warning(monkeypatch, fresh_state):
    flex = fc._flex_module()
    shown: set[str] = set()
    monkeypatch.setattr(flex, "_WARNINGS_SHOWN", shown)
    layout = PackedLayout(torch.tensor([0, 30]))
    q, k, v = _qkv(layout)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _flex._flex_call(q, k, v, layout, 0.5, lse=False)  # CPU: eager on purpose, quiet
    assert not [w for w in caught if "without torch.compile" in str(w.message)]
    assert not shown  # a later eager call (the CUDA fallback) still shows it


def _counting(fn, calls: list):
    def wrapper(x):
        calls.append(x.shape[0])
        return fn(x)

    return wrapper


def test_recompile_limit_warns_and_keeps_compiled_graphs(monkeypatch, fresh_state):
    """Real dynamo (eager backend, no inductor): past the limit a call runs eagerly, loudly."""
    monkeypatch.setattr(fc, "RECOMPILE_LIMIT", 2)

    def double(x):
        return x * 2

    compiled = torch.compile(double, backend="eager", dynamic=False)
    eager_calls: list[int] = []
    eager = _counting(double, eager_calls)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [fc.call_compiled(compiled, eager, torch.ones(n)) for n in (1, 2, 3, 4, 1, 2)]
    assert [float(o.sum()) for o in outs] == [2.0, 4.0, 6.0, 8.0, 2.0, 4.0]
    assert eager_calls == [3, 4]  # beyond the 2 compiled graphs; lengths 1 and 2 stay compiled
    loud = [w for w in caught if issubclass(w.category, fc.FlexFallbackWarning)]
    assert len(loud) == 1 and "recompile limit for it (2 graphs)" in str(loud[0].message)
    assert fc.fallback_reasons() == ["limit"]
    assert torch._dynamo.config.recompile_limit == 8  # the global setting is untouched


def test_refused_recompilation_and_oom_are_raised(fresh_state):
    def triple(x):
        return x * 3

    compiled = torch.compile(triple, backend="eager", dynamic=False)
    fc.call_compiled(compiled, triple, torch.ones(2))
    with (
        torch._dynamo.config.patch(error_on_recompile=True),
        pytest.raises(torch._dynamo.exc.RecompileError),
    ):
        fc.call_compiled(compiled, triple, torch.ones(5))

    def out_of_memory(x):
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(torch.OutOfMemoryError):
        fc.call_compiled(out_of_memory, triple, torch.ones(2))
    assert fc.fallback_reasons() == []


def test_attention_kernel_names_the_choice():
    blocked_cpu = (
        "cpu"
        if cpu_kernel_available(torch.zeros(1))
        else ("flash" if flash_kernel_available(torch.zeros(1)) else "math")
    )
    assert attention_kernel("auto", "cpu", deterministic=False) == blocked_cpu
    assert attention_kernel("auto", "cpu", deterministic=True) == blocked_cpu  # CPU unchanged
    fused = "flex" if flex_available() else "math"
    assert attention_kernel("auto", "cuda", deterministic=False) == fused
    # the reproduction (set_full_reproducibility: deterministic algorithms) runs the blocked path
    assert attention_kernel("auto", "cuda", deterministic=True) == "math"
    assert attention_kernel("math", "cuda", "long_range", deterministic=False) == "math"
    assert attention_kernel("auto", "cuda", "neighbourhood") == "edge"
    old = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert attention_kernel("auto", "cuda") == "math"  # None reads torch's setting
    finally:
        torch.use_deterministic_algorithms(old)
    with pytest.raises(ValueError, match="kernel must be one of"):
        attention_kernel("triton")
    with pytest.raises(ValueError, match="scope must be one of"):
        attention_kernel("auto", "cpu", "global")


def test_summary_line_names_the_kernel():
    cfg = load_config()
    line = describe_attention(cfg, torch.device("cpu"))
    scope = cfg.model.global_component.parameters.attention
    assert line == f"attention scope: {scope}, kernel: {attention_kernel('auto', 'cpu', scope)}"
