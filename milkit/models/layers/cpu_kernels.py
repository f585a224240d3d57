"""milkit's C kernels for the CPU: built at first use with the system compiler, called through ctypes.

``selective_scan_cpu.c`` (Mamba's selective scan) and ``mamba_cpu.c`` (the causal depthwise conv + SiLU and the
gate of a Mamba mixer), with ``cpu_math.h``, are compiled into one shared library with the system C compiler
(``$CC``, else ``cc``; ``-O3 -march=native`` and the parts of ``-ffast-math`` that leave the process's
floating-point state alone, plus ``$MILKIT_KERNEL_CFLAGS``) into ``$MILKIT_CACHE`` (default ``~/.cache/milkit``)
/kernels. The build happens at the first call that needs a kernel (never at import or test collection; a
one-time message says so), or ahead of time with ``python -m milkit.models.layers.cpu_kernels``.

The library's file name is a hash of what it is compiled for (:func:`cache_key`: the sources, the compiler and
its flags, the CPU's model and feature flags), so a cache in a home directory shared by machines with
different CPUs holds one library per CPU kind and never hands one CPU's ``-march=native`` code to another. The
file is written under a temporary name and renamed, so concurrent first uses never load a half-written library.
No compiler, a failed build, a library that does not load (corrupt, or missing a kernel) or
``MILKIT_CPU_KERNELS=0`` (the older name ``MILKIT_SCAN_KERNEL=0`` works too) make :func:`available` False, with
one warning; every caller then takes its PyTorch path, so the whole Mamba block runs in pure PyTorch.

The kernels take raw pointers and a range of channels (or rows); :func:`run` calls one per range on
``torch.get_num_threads()`` Python threads (ctypes releases the GIL). C code trusts its pointers, so every call
site first checks each tensor's device, dtype, shape and strides with :func:`check` (a few attribute reads),
which raises ``ValueError`` where a mistake would otherwise read or write out of bounds.

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
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from milkit.errors import ConfigError

__all__ = ["available", "build", "cache_key", "can_build", "check", "empty", "lib", "library_path", "ptr", "ranges",
           "run", "strided_rows", "usable", "use_kernel"]

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


def cpu_description() -> str:
    """The CPU's model name and feature flags (``/proc/cpuinfo``), else the machine type."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return os.uname().machine
    keys = ("model name", "flags", "Features", "CPU part")  # x86 and ARM spellings
    return "\n".join(dict.fromkeys(ln for ln in lines if ln.split(":")[0].strip() in keys)) or os.uname().machine


def _compiler() -> tuple[str, list[str]]:
    return os.environ.get("CC", "cc"), _FLAGS + os.environ.get("MILKIT_KERNEL_CFLAGS", "").split()


def cache_key(cpu: str | None = None) -> str:
    """Hash of what the library is compiled for: sources, compiler, flags and the CPU (``cpu``, default this one's
    :func:`cpu_description`)."""
    cc, flags = _compiler()
    text = [p.read_text() for p in _SOURCES + _HEADERS]
    cpu = cpu_description() if cpu is None else cpu
    return hashlib.sha256("\0".join([*text, cc, *flags, cpu]).encode()).hexdigest()[:16]


def library_path() -> Path:
    """Where this machine's library lives in the cache (it may not be built yet)."""
    cache = Path(os.environ.get("MILKIT_CACHE", Path.home() / ".cache" / "milkit")) / "kernels"
    return cache / f"milkit_cpu_{cache_key()}.so"


def _disabled() -> bool:
    return os.environ.get("MILKIT_CPU_KERNELS", os.environ.get("MILKIT_SCAN_KERNEL", "1")) == "0"


def can_build() -> bool:
    """Cheap (no build): the kernels are not disabled and either built for this CPU or a compiler is on the PATH.
    For test skip marks; :func:`available` builds."""
    return not _disabled() and (library_path().exists() or shutil.which(_compiler()[0]) is not None)


def build() -> Path:
    """Compile the library for this CPU unless the cache has it; its path."""
    out = library_path()
    if out.exists():
        return out
    cc, flags = _compiler()
    log.info("milkit: compiling the CPU kernels for this CPU (once per machine type) into %s", out)
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *flags, f"-I{_DIR}", *map(str, _SOURCES), "-o", tmp, "-lm"], check=True,
                       capture_output=True, timeout=180)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("milkit: CPU kernels compiled in %.0f s", time.perf_counter() - t0)
    return out


@functools.lru_cache(maxsize=1)
def lib() -> ctypes.CDLL | None:
    """The loaded library, built at the first call; None (after one warning) when it cannot be built or loaded,
    or with ``MILKIT_CPU_KERNELS=0``."""
    if _disabled():
        return None
    path = None
    try:
        path = build()
        so = ctypes.CDLL(str(path))
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(so, name)
            fn.argtypes, fn.restype = argtypes, None
    except (OSError, AttributeError, subprocess.SubprocessError) as err:
        detail = (getattr(err, "stderr", b"") or b"").decode(errors="replace")[:300]
        hint = f"; delete {path} to rebuild it" if path is not None and path.exists() else ""
        log.warning("milkit: CPU kernels unavailable (%s%s)%s; using the PyTorch paths", err,
                    f" {detail}" if detail else "", hint)
        return None
    return so


def available() -> bool:
    """True when the CPU kernels are built (building them if needed) and not disabled."""
    return lib() is not None


def check(kernel: str, name: str, t: Tensor | None, shape: Sequence[int], dtype: torch.dtype = torch.float32,
          row_stride: int | None = None, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``t`` is what ``kernel`` reads or writes through ``name``: a CPU tensor of
    ``dtype`` and ``shape``, contiguous, or with ``row_stride``: ``(B, L, C)`` with unit channel stride, rows
    ``row_stride`` apart and batches ``L · row_stride`` apart. None passes where the argument is ``optional``."""
    if t is None:
        if optional:
            return
        raise ValueError(f"milkit CPU kernel {kernel}: '{name}' is required")
    want = f"a {str(dtype).removeprefix('torch.')} CPU tensor of shape {tuple(shape)}"
    got = f"got {str(t.dtype).removeprefix('torch.')} on {t.device.type}, shape {tuple(t.shape)}"
    if t.device.type != "cpu" or t.dtype != dtype or tuple(t.shape) != tuple(shape):
        raise ValueError(f"milkit CPU kernel {kernel}: '{name}' must be {want}, {got}")
    if row_stride is None:
        ok = t.is_contiguous()
    else:
        bsz, length, _ = shape
        ok = t.stride(2) == 1 and t.stride(1) == row_stride and (bsz == 1 or t.stride(0) == length * row_stride)
    if not ok:
        layout = "contiguous" if row_stride is None else f"rows {row_stride} elements apart"
        raise ValueError(f"milkit CPU kernel {kernel}: '{name}' must be {layout}, got strides {t.stride()}")


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


if __name__ == "__main__":  # build ahead of time, e.g. once per node type on a cluster
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build() if lib() is not None else "milkit: CPU kernels unavailable, see the warning above")
