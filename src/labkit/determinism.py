"""The same numbers on every machine: pinned CPU kernels and one thread per library.

Float results of BLAS and convolution kernels depend on the instruction set the library
picks at run time (AVX-512 on one processor, AVX2 on another) and on how many threads
split a reduction. Chapters whose compared outputs carry such floats call
`pin_kernels()` before torch is imported and `pin_threads()` after.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cpu_flags() -> set[str]:
    """The processor's feature flags on Linux (an empty set elsewhere)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    flags = next((line for line in lines if line.startswith("flags")), "flags:")
    return set(flags.split(":", 1)[1].split())


def pin_kernels() -> str:
    """Select MKL's conditional-numerical-reproducibility path and, where the processor
    has AVX2 and FMA, ATen's AVX2 kernels. Must run before torch is imported, since both
    are read when the libraries load. Returns one line saying what was set."""
    if "torch" in sys.modules:
        raise RuntimeError(
            "pin_kernels() must run before `import torch`: MKL and ATen read their "
            "settings when torch loads. Restart the kernel and call it first."
        )
    os.environ["MKL_CBWR"] = "COMPATIBLE"
    line = "MKL code path: COMPATIBLE"
    if {"avx2", "fma"} <= cpu_flags():
        os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
        line += "; ATen kernels: avx2"
    else:
        line += "; ATen kernels: the library's default (no AVX2/FMA here)"
    return line


def pin_threads() -> str:
    """One thread for NumPy's BLAS, OpenMP and, when they are imported, PyTorch (with
    deterministic algorithms) and OpenCV. Returns one line saying what was pinned."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    pinned = ["BLAS/OpenMP"]
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        pinned.append("PyTorch")
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(1)
        pinned.append("OpenCV")
    return "one thread each: " + ", ".join(pinned)
