"""milkit's C kernels for the CPU: built at first use with the system compiler, called through ctypes.

``selective_scan_cpu.c`` (Mamba's selective scan) and ``mamba_cpu.c`` (the causal depthwise conv + SiLU and the
gate of a Mamba mixer), with ``cpu_math.h``, are compiled into one shared library with the system C compiler
(``$CC``, else ``cc``; ``-O3 -march=native`` and the parts of ``-ffast-math`` that leave the process's
floating-point state alone, plus ``$MILKIT_KERNEL_CFLAGS``) into ``$MILKIT_CACHE`` (default ``~/.cache/milkit``)
/kernels, keyed by the sources, the flags and the CPU's feature flags; the file is written under a temporary name
and renamed, so concurrent first uses never load a half-written library. No compiler, a failed build or
``MILKIT_CPU_KERNELS=0`` (the older name ``MILKIT_SCAN_KERNEL=0`` works too) make :func:`available` False;
every caller then takes its PyTorch path, so the whole Mamba block runs in pure PyTorch.

The kernels take raw pointers and a range of channels (or rows); :func:`run` calls one per range on
``torch.get_num_threads()`` Python threads (ctypes releases the GIL).

:func:`empty` allocates the kernels' outputs. A fresh tensor of tens of MB costs more in first-touch page faults
(4 KiB each) than the kernel spends writing it (16 ms vs 2.4 ms for 40 MB on our VM), so on Linux the 2 MiB-aligned
interior of outputs of at least 4 MiB is advised to use transparent huge pages (``madvise(MADV_HUGEPAGE)``, what
PyTorch's opt-in ``THP_MEM_ALLOC_ENABLE`` does for every allocation); ``MILKIT_THP=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from milkit.errors import ConfigError

__all__ = ["available", "empty", "lib", "ptr", "ranges", "run", "strided_rows", "usable", "use_kernel"]

_DIR = Path(__file__).parent
_SOURCES = [_DIR / "selective_scan_cpu.c", _DIR / "mamba_cpu.c"]
_HEADERS = [_DIR / "cpu_math.h"]
# -ffast-math's parts, not the flag itself: with -ffast-math (or -funsafe-math-optimizations) GCC < 13 links
# crtfastmath.o into a shared library too, whose constructor turns on flush-to-zero for the whole process when
# the library is loaded (every later torch op would flush denormals).
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-signed-zeros", "-fno-trapping-math", "-fassociative-math",
          "-freciprocal-math", "-ffinite-math-only", "-fno-rounding-math", "-fPIC", "-shared", "-std=c99"]
log = logging.getLogger(__name__)

P, I64 = ctypes.c_void_p, ctypes.c_int64
_INT = ctypes.c_int
# argument types of every exported function (pointers, flags, sizes, the range [lo, hi) before the outputs)
_SIGNATURES = {
    "scan_fwd": [P] * 8 + [_INT] + [I64] * 7 + [P] * 2,
    "scan_bwd": [P] * 8 + [_INT] + [I64] * 7 + [P] * 9,
    "conv_fwd": [P, I64, P, P, P, _INT] + [I64] * 6 + [P],
    "conv_bwd": [P, I64, P, P, P, _INT] + [I64] * 4 + [_INT] + [I64] * 2 + [P] * 5,
    "gate_fwd": [P, P, P, I64, I64, I64, I64, P],
    "gate_bwd": [P, P, P, P, I64, I64, I64, I64, P, P],
}


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return os.uname().machine


def _build(cache: Path) -> Path:
    cc = os.environ.get("CC", "cc")
    flags = _FLAGS + os.environ.get("MILKIT_KERNEL_CFLAGS", "").split()
    text = [p.read_text() for p in _SOURCES + _HEADERS]
    key = hashlib.sha256("\0".join([*text, cc, *flags, _cpu_flags()]).encode()).hexdigest()[:16]
    out = cache / f"milkit_cpu_{key}.so"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        try:
            subprocess.run([cc, *flags, f"-I{_DIR}", *map(str, _SOURCES), "-o", tmp, "-lm"], check=True,
                           capture_output=True, timeout=180)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return out


@functools.lru_cache(maxsize=1)
def lib() -> ctypes.CDLL | None:
    """The loaded library, or None (no compiler, failed build, ``MILKIT_CPU_KERNELS=0``)."""
    if os.environ.get("MILKIT_CPU_KERNELS", os.environ.get("MILKIT_SCAN_KERNEL", "1")) == "0":
        return None
    cache = Path(os.environ.get("MILKIT_CACHE", Path.home() / ".cache" / "milkit")) / "kernels"
    try:
        so = ctypes.CDLL(str(_build(cache)))
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        log.warning("milkit: CPU kernels unavailable (%s %s); using the PyTorch paths", err,
                    detail.decode(errors="replace")[:300])
        return None
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(so, name)
        fn.argtypes, fn.restype = argtypes, None
    return so


def available() -> bool:
    """True when the CPU kernels are built (or can be) and not disabled with ``MILKIT_CPU_KERNELS=0``."""
    return lib() is not None


def usable(*tensors: Tensor | None) -> bool:
    """The kernels apply: the library is there and every given tensor is a float32 CPU tensor."""
    return available() and all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors)


def use_kernel(impl: str, *tensors: Tensor | None) -> bool:
    """Dispatch of an op with ``impl="auto" | "cpu" | "torch"``: True for the C kernel (``"cpu"``, or ``"auto"``
    when :func:`usable`); ``"cpu"`` where the kernel cannot run is a :class:`~milkit.errors.ConfigError`."""
    if impl not in ("auto", "cpu", "torch"):
        raise ConfigError(f"impl must be 'auto', 'cpu' or 'torch', got '{impl}'")
    if impl == "cpu" and not usable(*tensors):
        raise ConfigError("impl='cpu' needs float32 CPU tensors and milkit's C kernels (a C compiler, "
                          "MILKIT_CPU_KERNELS not 0); use impl='auto'")
    return impl == "cpu" or (impl == "auto" and usable(*tensors))


def strided_rows(t: Tensor) -> tuple[Tensor, int]:
    """``t (B, L, C)`` as the kernels read it: unit channel stride and row ``(b, l)`` at ``(b·L + l)·stride`` (a
    chunk of a wider tensor, such as half of ``in_proj``'s output, qualifies as it is), and that row stride;
    otherwise a contiguous copy."""
    bsz, length, _ = t.shape
    if t.stride(2) == 1 and (bsz == 1 or t.stride(0) == length * t.stride(1)):
        return t, t.stride(1)
    t = t.contiguous()
    return t, t.shape[2]


_HUGE = 1 << 21
_MADV_HUGEPAGE = 14


@functools.lru_cache(maxsize=1)
def _madvise() -> Callable[[int, int, int], int] | None:
    if os.environ.get("MILKIT_THP", "1") == "0" or not Path("/sys/kernel/mm/transparent_hugepage").exists():
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [P, ctypes.c_size_t, _INT], _INT
    return fn


def empty(*shape: int, like: Tensor) -> Tensor:
    """``torch.empty(shape)`` with ``like``'s dtype and device; on Linux, large ones backed by huge pages."""
    t = like.new_empty(shape)
    madvise = _madvise()
    nbytes = t.numel() * t.element_size()
    if madvise is not None and nbytes >= 2 * _HUGE:
        lo, hi = -(-t.data_ptr() // _HUGE) * _HUGE, (t.data_ptr() + nbytes) // _HUGE * _HUGE
        madvise(lo, hi - lo, _MADV_HUGEPAGE)  # advice only: a failure leaves ordinary pages
    return t


def ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def ranges(size: int, multiple: int = 1) -> list[tuple[int, int]]:
    """``[0, size)`` cut into one range per thread, each a whole number of ``multiple``-sized pieces."""
    pieces = -(-size // multiple)
    k = max(1, min(torch.get_num_threads(), pieces))
    bounds = [min(size, round(i * pieces / k) * multiple) for i in range(k + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def run(fn: Callable[..., None], parts: list[tuple[int, int]], args: list[Any],
        per_part: list[list[Any]] | None = None) -> None:
    """``fn(*args, lo, hi, *per_part[i])`` for every range ``(lo, hi)`` of ``parts``, one thread each."""
    extra = per_part or [[] for _ in parts]
    if len(parts) == 1:
        fn(*args, *parts[0], *extra[0])
        return
    with ThreadPoolExecutor(len(parts)) as pool:
        list(pool.map(lambda i: fn(*args, *parts[i], *extra[i]), range(len(parts))))
