"""Helpers shared by the strategies: chunking, devices, tie-breaking and distances.

Everything that touches torch imports it inside the function, so ``import dal_widgets.strategies``
stays fast and works in environments where only the numpy strategies are used.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from dal_widgets._checks import param_error

__all__ = [
    "NUMPY_CHUNK",
    "TORCH_CHUNK",
    "argmax_random",
    "as_tensor",
    "float_dtype",
    "min_sq_dist",
    "one_thread",
    "resolve_device",
    "row_chunks",
    "sq_dist_block",
    "sq_norms",
]

#: Elements per chunk for numpy elementwise work: 256 kB of float32, so a block and its
#: temporaries stay in the L2 cache (measured best on an AMD EPYC: 1.5x faster than 2 MB).
NUMPY_CHUNK = 1 << 16
#: Elements per chunk for a torch block (a rows x cols distance block, a gathered slice, ...).
TORCH_CHUNK = 1 << 22


def row_chunks(n_rows: int, row_elems: int, budget: int = NUMPY_CHUNK) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` row ranges holding about ``budget`` elements each (at least one row)."""
    step = max(1, budget // max(1, row_elems))
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


def float_dtype(dtype: Any) -> np.dtype:
    """float32 stays float32 (half precision is widened to it); everything else is float64."""
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float16):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def resolve_device(device: Any, where: str) -> Any:
    """The ``torch.device`` for ``device`` (None means the CPU, "auto" the best available)."""
    import torch

    expected = "None, 'auto', 'cpu', 'cuda', 'cuda:<index>', 'mps' or a torch.device"
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        from dal_widgets._device import auto_device

        return auto_device()
    if not isinstance(device, str | torch.device):
        raise param_error("device", where, expected, device, TypeError)
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise param_error("device", where, expected, device) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise param_error("device", where, "an available device (CUDA is not available)", device)
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise param_error("device", where, "an available device (MPS is not available)", device)
    if dev.type not in ("cpu", "cuda", "mps"):
        raise param_error("device", where, expected, device)
    return dev


@contextmanager
def one_thread(device: Any) -> Iterator[None]:
    """Run the enclosed torch CPU work on the calling thread alone.

    The greedy loops issue many small operations per pick. On the CPU each may open an
    OpenMP parallel region, and a region's barrier waits a whole scheduler time slice
    whenever another process holds a core: 1,000 core-set picks took 1.3 s on one thread but
    5 to 11 s on two on a shared 2-core machine, and never less on two. Under torch's OpenMP
    backend ``set_num_threads`` changes the calling thread's setting (other running threads
    keep theirs); the previous value is restored on exit. No-op for other devices.
    """
    if device.type != "cpu":
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def as_tensor(arr: np.ndarray, device: Any, dtype: Any = None) -> Any:
    """``arr`` as a float tensor on ``device``, sharing memory with numpy on the CPU when it can.

    ``dtype`` defaults to :func:`float_dtype` of the array. Read-only or reversed arrays are
    copied, because torch cannot wrap them without a warning.
    """
    import torch

    arr = np.asarray(arr)
    target = float_dtype(arr.dtype) if dtype is None else np.dtype(dtype)
    if device.type == "mps":
        target = np.dtype(np.float32)  # MPS has no float64
    if arr.dtype != target or not arr.flags.writeable or any(s < 0 for s in arr.strides):
        arr = np.array(arr, dtype=target)
    tensor = torch.from_numpy(arr)
    return tensor if device.type == "cpu" else tensor.to(device)


def argmax_random(values: Any, rng: np.random.Generator, eps: float | None = None) -> int:
    """Position of the largest value, near-ties (a few ulps apart) broken by ``rng``.

    Works on numpy arrays and torch tensors. ``eps`` is the machine epsilon of the precision
    the values were computed in (default: that of their dtype). The rng is consumed only when
    there is a tie, so reference implementations in tests can replay the same draws.
    """
    if isinstance(values, np.ndarray):
        top = values.max()
        if eps is None:
            eps = float(np.finfo(values.dtype).eps) if values.dtype.kind == "f" else 0.0
        ties = np.flatnonzero(values >= top - 4 * eps * abs(top))
        if ties.size == 1:
            return int(ties[0])
        return int(ties[rng.integers(ties.size)])
    import torch

    top = values.max()
    if eps is None:
        eps = torch.finfo(values.dtype).eps if values.dtype.is_floating_point else 0.0
    tied = torch.nonzero(values >= top - 4 * eps * top.abs()).flatten()
    if tied.numel() == 1:
        return int(tied[0])
    return int(tied[int(rng.integers(tied.numel()))])


def sq_norms(x: Any) -> Any:
    """Squared row norms of a 2-D tensor, in chunks (no full-size temporary)."""
    import torch

    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start, stop in row_chunks(x.shape[0], x.shape[1], TORCH_CHUNK):
        block = x[start:stop]
        out[start:stop] = torch.einsum("ij,ij->i", block, block)
    return out


def sq_dist_block(a: Any, sq_a: Any, b: Any, sq_b: Any) -> Any:
    """Squared Euclidean distances between the rows of ``a`` and ``b`` (one dense block).

    Uses ||a||^2 + ||b||^2 - 2 a.b, which is one matrix product; clamped at zero because the
    cancellation can leave tiny negative values for (near-)identical rows.
    """
    import torch

    block = torch.addmm(sq_b.unsqueeze(0), a, b.T, alpha=-2.0)
    block += sq_a.unsqueeze(1)
    return block.clamp_min_(0.0)


def min_sq_dist(x: Any, sq_x: Any, centres: Any, sq_c: Any, out: Any = None) -> Any:
    """For each row of ``x`` the squared distance to its nearest row of ``centres``.

    Chunked over both sides so the distance block never exceeds :data:`TORCH_CHUNK` elements:
    memory is O(N), not O(N x centres). ``out`` (if given) is lowered in place.
    """
    import torch

    if out is None:
        out = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    n_c = centres.shape[0]
    if n_c == 0:
        return out
    col_step = max(1, min(n_c, TORCH_CHUNK // 256))
    row_step = max(1, TORCH_CHUNK // col_step)
    for c0 in range(0, n_c, col_step):
        c1 = min(c0 + col_step, n_c)
        cb, sqb = centres[c0:c1], sq_c[c0:c1]
        for r0 in range(0, x.shape[0], row_step):
            r1 = min(r0 + row_step, x.shape[0])
            # min_j(|a|^2 + |b_j|^2 - 2 a.b_j) = |a|^2 + min_j(|b_j|^2 - 2 a.b_j): the row
            # constant is added after the reduction, saving two passes over the block.
            near = torch.addmm(sqb.unsqueeze(0), x[r0:r1], cb.T, alpha=-2.0).amin(dim=1)
            near += sq_x[r0:r1]
            torch.minimum(out[r0:r1], near.clamp_min_(0.0), out=out[r0:r1])
    return out
