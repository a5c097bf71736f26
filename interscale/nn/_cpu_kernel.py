"""InterScale's own CPU attention kernel (``kernel="cpu"``): build, load and call.

The kernel is the C file ``_cpu_attention.c`` next to this module: exact softmax attention of
one sample, forward and backward, for float32 CPU tensors, with the ``full`` and ``long_range``
scopes (a cell never attends to itself; under ``long_range`` nor to its neighbours). With the
published head dimension of 4 it runs forward and backward about twice as fast as PyTorch's fused
flash kernel (``scripts/bench_attention.py``), and it agrees with a float64 dense reference to
float32 rounding.

Build: on first use the C file is compiled with the system's C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``) into a shared library cached under ``$INTERSCALE_CACHE_DIR`` (default
``~/.cache/interscale``; a folder in the temporary directory where that is not writable), named
by a hash of the source, the compiler and its flags and the processor (``-march=native``). The
library is written to a temporary name and renamed, so that concurrent processes never load a
half-written file. Where no compiler works,
:func:`cpu_kernel_status` says why; ``kernel="auto"`` then uses PyTorch's flash kernel and warns
once, and ``kernel="cpu"`` raises.

Threads: the C functions take a range of tasks (``chunk`` query rows of one head) and release
the GIL (``ctypes``), so they run on a small pool of Python threads, one per torch thread. The
tasks and the order in which their key/value gradients are summed are fixed by the sequence
length alone, so results are bit-identical for any number of threads.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from interscale.nn._masks import KeyMask

__all__ = ["CpuKernelStatus", "cpu_attention", "cpu_kernel_available", "cpu_kernel_status"]

SOURCE = Path(__file__).with_name("_cpu_attention.c")
# Query rows per task: at least this many, and at most MAX_TASKS_PER_HEAD tasks per head, which
# bounds the backward's per-task gradient buffers to MAX_TASKS_PER_HEAD x 2 x D x L per head.
MIN_CHUNK = 256
MAX_TASKS_PER_HEAD = 16
_FLAGS = ("-O3", "-fopenmp-simd", "-fno-math-errno", "-fPIC", "-shared")
_NATIVE = ("-march=native",)


class CpuKernelStatus(NamedTuple):
    """Whether the CPU kernel could be built, and the library or the reason.

    ``compiler`` (its path and the first line of its ``--version``) and ``flags`` name what
    built the loaded library: with ``-march=native`` both decide its float rounding, so
    bit-exact records (the frozen test fixture, the reproduction's records) store them. Both
    are empty when the kernel is unavailable.
    """

    available: bool
    detail: str
    compiler: str = ""
    flags: str = ""


def _cache_dir() -> Path:
    """Where built libraries live: ``$INTERSCALE_CACHE_DIR``, else ``~/.cache/interscale``.

    When that folder cannot be created or written (a read-only home), a folder of this user in
    the system's temporary directory is used instead.
    """
    root = os.environ.get("INTERSCALE_CACHE_DIR")
    if root:
        preferred = Path(root)
    else:
        home_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        preferred = home_cache / "interscale"
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"interscale-{uid}"


def _compilers() -> list[str]:
    names = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    return [path for name in names if (path := shutil.which(name))]


def _processor() -> str:
    """What -march=native compiles for: the processor's name and feature flags."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


@functools.cache
def _compiler_version(compiler: str) -> str:
    """The first line of ``compiler --version`` (empty when it prints nothing)."""
    try:
        run = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = (run.stdout or run.stderr).strip().splitlines()
    return lines[0] if lines else ""


def _compile(compiler: str, flags: tuple[str, ...], target: Path) -> str | None:
    """Compile the kernel to ``target`` atomically; None on success, else the compiler's words."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *flags, str(SOURCE), "-o", tmp, "-lm"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            words = (run.stderr or run.stdout).strip().splitlines()
            return words[-1] if words else f"exit status {run.returncode}"
        os.replace(tmp, target)
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    ptr, i32, i64, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
    lib.attn_forward.argtypes = [ptr] * 5 + [i32] * 3 + [f32, i32, ptr, ptr, i64, i64, ptr]
    lib.attn_forward.restype = None
    lib.attn_backward.argtypes = [ptr] * 8 + [i32] * 3 + [f32, i32, ptr, ptr, i64, i64, ptr, ptr]
    lib.attn_backward.restype = None
    lib.attn_reduce.argtypes = [ptr, ptr, i32, i32, i32, i32, i64, i64]
    lib.attn_reduce.restype = None
    return lib


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str, str, str]:
    """Build (or find in the cache) and load the kernel.

    Returns the library, its path (or why there is none), the compiler and the flags.
    """
    if not SOURCE.is_file():
        return None, f"the kernel source {SOURCE} is missing from the installation", "", ""
    compilers = _compilers()
    if not compilers:
        return None, "no C compiler found ($CC, cc, gcc or clang)", "", ""
    source, processor = SOURCE.read_bytes(), _processor().encode()
    cache = _cache_dir()
    reasons = []
    for compiler in compilers:
        # the version is part of the cache key: an upgraded compiler at the same path rebuilds
        named = f"{compiler} ({_compiler_version(compiler)})"
        for flags in (_NATIVE + _FLAGS, _FLAGS):
            key = hashlib.sha256()
            for part in (source, named.encode(), " ".join(flags).encode(), processor):
                key.update(part)
            target = cache / f"cpu_attention_{key.hexdigest()[:20]}.so"
            if not target.is_file():
                try:
                    error = _compile(compiler, flags, target)
                except (OSError, subprocess.SubprocessError) as exc:
                    error = str(exc)
                if error is not None:
                    reasons.append(f"{Path(compiler).name} {' '.join(flags)}: {error}")
                    continue
            try:
                return _declare(ctypes.CDLL(str(target))), str(target), named, " ".join(flags)
            except OSError as exc:
                reasons.append(f"loading {target}: {exc}")
    return None, "the kernel did not compile: " + "; ".join(reasons), "", ""


def cpu_kernel_status() -> CpuKernelStatus:
    """Build the CPU attention kernel if needed and tell whether it is usable.

    Returns
    -------
    CpuKernelStatus
        ``available``; in ``detail``, the loaded library's path or why it is unavailable; the
        ``compiler`` and ``flags`` that built it.
    """
    lib, detail, compiler, flags = _library()
    return CpuKernelStatus(lib is not None, detail, compiler, flags)


def cpu_kernel_available(tensor: Tensor) -> bool:
    """Tell whether ``kernel="cpu"`` can process ``tensor`` (float32 on the CPU, kernel built).

    Parameters
    ----------
    tensor
        A query tensor (only its device and dtype matter).

    Returns
    -------
    bool
        True when the kernel is built and ``tensor`` is a float32 CPU tensor.
    """
    return (
        tensor.device.type == "cpu" and tensor.dtype == torch.float32 and _library()[0] is not None
    )


_POOL_LOCK = threading.Lock()
# keyed by process as well: a forked child inherits the dict but not the pool's threads
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _run_ranges(n_items: int, call) -> None:
    """Run ``call(start, stop)`` over ``n_items`` items cut into one contiguous range per thread."""
    n_threads = max(1, min(torch.get_num_threads(), n_items))
    if n_threads == 1:
        call(0, n_items)
        return
    key = (os.getpid(), n_threads)
    with _POOL_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(n_threads, "interscale-attn")
    bounds = [round(n_items * i / n_threads) for i in range(n_threads + 1)]
    futures = [pool.submit(call, a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    for future in futures:
        future.result()


def _address(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class _Tasks(NamedTuple):
    """How one sample's rows are cut into tasks, and its excluded keys as C arrays."""

    chunk: int
    count: int
    excl_ptr: Tensor | None
    excl_idx: Tensor | None


def _tasks(n_heads: int, length: int, key_mask: KeyMask) -> _Tasks:
    chunk = max(MIN_CHUNK, math.ceil(length / MAX_TASKS_PER_HEAD))
    count = n_heads * math.ceil(length / chunk)
    if key_mask.nbr_ptr is None or key_mask.nbr_src is None:
        return _Tasks(chunk, count, None, None)
    ptr = key_mask.nbr_ptr.to(torch.int64).contiguous()
    idx = key_mask.nbr_src.to(torch.int64).contiguous()
    return _Tasks(chunk, count, ptr, idx)


def _forward(q: Tensor, kt: Tensor, vt: Tensor, key_mask: KeyMask, scale: float):
    lib = _library()[0]
    n_heads, length, dim = q.shape
    out = torch.empty_like(q)
    lse = torch.empty(n_heads, length, dtype=q.dtype)
    tasks = _tasks(n_heads, length, key_mask)

    def call(t0: int, t1: int) -> None:
        row = torch.empty(length, dtype=torch.float32)
        lib.attn_forward(
            q.data_ptr(), kt.data_ptr(), vt.data_ptr(), out.data_ptr(), lse.data_ptr(),
            n_heads, length, dim, scale, tasks.chunk, _address(tasks.excl_ptr),
            _address(tasks.excl_idx), t0, t1, row.data_ptr(),
        )  # fmt: skip

    _run_ranges(tasks.count, call)
    return out, lse


def _backward(grad_out, q, kt, vt, out, lse, key_mask: KeyMask, scale: float):
    lib = _library()[0]
    n_heads, length, dim = q.shape
    tasks = _tasks(n_heads, length, key_mask)
    dq = torch.empty_like(q)
    buffers = torch.empty(tasks.count, 2, dim, length, dtype=torch.float32)

    def call(t0: int, t1: int) -> None:
        rows = torch.empty(2, length, dtype=torch.float32)
        lib.attn_backward(
            grad_out.data_ptr(), q.data_ptr(), kt.data_ptr(), vt.data_ptr(), out.data_ptr(),
            lse.data_ptr(), dq.data_ptr(), buffers.data_ptr(), n_heads, length, dim, scale,
            tasks.chunk, _address(tasks.excl_ptr), _address(tasks.excl_idx), t0, t1,
            rows[0].data_ptr(), rows[1].data_ptr(),
        )  # fmt: skip

    _run_ranges(tasks.count, call)
    kv = torch.empty(n_heads, 2, dim, length, dtype=torch.float32)

    def reduce(r0: int, r1: int) -> None:
        lib.attn_reduce(
            buffers.data_ptr(), kv.data_ptr(), n_heads, length, dim, tasks.chunk, r0, r1
        )

    _run_ranges(n_heads * 2 * dim, reduce)
    return dq, kv[:, 0].transpose(1, 2), kv[:, 1].transpose(1, 2)


class _CpuAttention(torch.autograd.Function):
    """Exact masked softmax attention of one sample through the C kernel."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask):
        scale = 1.0 / math.sqrt(q.shape[-1])
        q3 = q[0].contiguous()
        kt = k[0].transpose(1, 2).contiguous()
        vt = v[0].transpose(1, 2).contiguous()
        out, lse = _forward(q3, kt, vt, key_mask, scale)
        ctx.save_for_backward(q3, kt, vt, out, lse)
        ctx.key_mask = key_mask
        ctx.scale = scale
        return out.unsqueeze(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q3, kt, vt, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(
            grad_out[0].contiguous(), q3, kt, vt, out, lse, ctx.key_mask, ctx.scale
        )
        return dq.unsqueeze(0), dk.unsqueeze(0), dv.unsqueeze(0), None


def cpu_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: KeyMask) -> Tensor:
    """Exact softmax attention of one sample under ``key_mask`` through the C kernel.

    Parameters
    ----------
    q, k, v
        ``[1, H, L, d]`` float32 CPU queries, keys and values (cells, then CLS).
    key_mask
        The sample's scope (``full``, or ``long_range`` with its neighbour lists).

    Returns
    -------
    Tensor
        ``[1, H, L, d]`` attention output, differentiable w.r.t. ``q``, ``k`` and ``v``.

    Raises
    ------
    ValueError
        If the kernel is not built (the reason is given) or the tensors are not float32 on
        the CPU.
    """
    status = cpu_kernel_status()
    if not status.available:
        raise ValueError(f"kernel='cpu' is unavailable: {status.detail}")
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in (q, k, v)):
        raise ValueError(f"kernel='cpu' needs float32 CPU tensors; got {q.dtype} on {q.device}")
    return _CpuAttention.apply(q, k, v, key_mask)


_WARNED = False


def warn_unavailable_once() -> None:
    """Say once per process that ``kernel="auto"`` runs PyTorch's kernel, and why."""
    global _WARNED
    if not _WARNED:
        _WARNED = True
        warnings.warn(
            "InterScale's CPU attention kernel is unavailable ("
            + cpu_kernel_status().detail
            + "); attention runs PyTorch's fused flash kernel, about half as fast. "
            "Set model.global_component.parameters.kernel to 'flash' to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
