"""The numerical path of every stage, fixed before torch or numpy load (imported by stages/__init__.py).

Which kernels run decides the bits of a float result: ATen picks its vector kernels by CPU
(AVX-512 here, AVX2 on older machines), MKL picks its GEMM code path by CPU and vendor, oneDNN
by ISA, NumPy's own SIMD loops by CPU features, and a parallel reduction's result depends on how
many threads split it. The same code on another x86-64 machine therefore gives other bits, and
`dvc metrics diff` against the committed run lists hardware, not changes (issue 12).

`repro.portable: true` (the default) pins every one of those choices to a path that every AVX2
x86-64 CPU has, Intel or AMD, with or without AVX-512:

    ATEN_CPU_CAPABILITY=avx2          ATen's vectorized CPU kernels (default | avx2 | avx512)
    MKL_CBWR=COMPATIBLE,STRICT        MKL's conditional bitwise reproducibility: the COMPATIBLE code
                                      branch (SSE2 without rcpps/rsqrtps), the one branch MKL runs
                                      alike on Intel and non-Intel CPUs; STRICT so results do not
                                      depend on alignment
    MKL_ENABLE_INSTRUCTIONS=AVX2      MKL's dispatch ceiling (Intel CPUs would otherwise take AVX-512)
    ONEDNN_MAX_CPU_ISA=AVX2           oneDNN (mkldnn) kernels, where torch uses them
    DNNL_MAX_CPU_ISA=AVX2             the same knob under oneDNN's older name
    NPY_DISABLE_CPU_FEATURES=...      NumPy's AVX-512 loops off, so its AVX2 loops run
    OPENBLAS_CORETYPE=Haswell         OpenBLAS's kernels (NumPy / scikit-learn's BLAS) at AVX2
    OMP/MKL/OPENBLAS_NUM_THREADS=1    one thread: a reduction's order does not depend on the core count

and torch.set_num_threads(1) in setup_torch.

Why COMPATIBLE and not AVX2 (the first pin used MKL_CBWR=AVX2,STRICT): Intel's oneMKL developer
guide ("Getting Started with Conditional Numerical Reproducibility") says the AVX2 branch gives the
same results on every *Intel* AVX2 CPU, and that on non-Intel CPUs that setting falls back to the
AUTO branch, so results may differ. Measured: the run committed from a 2-core AMD EPYC (Zen 4) with
AVX2,STRICT did not reproduce on a 2-core Intel Xeon (Sapphire Rapids class, AVX-512 + AMX) with
the same pin: the 8192-wide lr 1e-4 FFN's val CE 0.0873398 there, 0.0874347 here. On the Intel
machine AVX2,STRICT and AUTO,STRICT (with MKL_ENABLE_INSTRUCTIONS=AVX2) gave one weight hash and
COMPATIBLE,STRICT another; COMPATIBLE cost 1.4x per step of the 8192-wide FFN (42 vs 29-31 ms,
150 steps, interleaved, 2 rounds, busy machine). MKL's GEMMs are the only vendor-dispatched code
in the path: ATen's AVX2 kernels, NumPy's AVX2 loops and OpenBLAS's Haswell kernels are fixed
instruction sequences whose IEEE results do not depend on the vendor.

Measured on a 2-core AMD EPYC (Zen 4, AVX-512):
a 1024-wide FFN trained 300 steps gives one weight hash under an outside ATEN_CPU_CAPABILITY of
default, avx2 or avx512 when pinned, and three different hashes when not (tests/test_portable.py
repeats this on the tiny pipeline). `repro.portable: false` leaves the machine's native choices
and threads from the CPU affinity: faster kernels, bits that hold only on one machine.

Portable does not cover CUDA, ARM, or a user's own environment that loads torch before a stage
(then compare with scripts/compare_runs.py, which knows the seed spread).

Also process-wide, portable or not: glibc's malloc keeps freed blocks up to 32 MB instead of
returning them to the OS (M_MMAP_THRESHOLD). Autograd allocates each step's gradients afresh; a
25 MB gradient (the 8192-wide FFN's W_in) returned with munmap and faulted back in every step
cost ~25% of the step (25.7 -> 20.0 ms/step, 1 thread, this machine). It changes no arithmetic.
"""

from __future__ import annotations

import ctypes
import os
import sys

PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE,STRICT",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # NumPy 2.x dispatch targets above X86_V3 (AVX2)
    "OPENBLAS_CORETYPE": "Haswell",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
MALLOC_KEEP_BYTES = 32 * 1024 * 1024  # glibc's largest mmap threshold on 64-bit

_state = {"portable": None, "overridden": {}}


def read_portable(params_path: str = "params.yaml") -> bool:
    """params.yaml's repro.portable; True where the file or key is missing (the stage's own
    params check reports a missing file). A non-boolean value is reported by setup_torch."""
    try:
        from ruamel.yaml import YAML

        with open(params_path) as f:
            raw = YAML(typ="safe", pure=True).load(f)
        value = raw["repro"]["portable"]
    except Exception:
        return True
    return value if isinstance(value, bool) else True


def _keep_freed_memory() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to tune
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, MALLOC_KEEP_BYTES)
    libc.mallopt(M_TRIM_THRESHOLD, 4 * MALLOC_KEEP_BYTES)


def pin(portable: bool) -> None:
    """Set the environment of the numerical libraries; must run before torch/numpy are imported."""
    late = [m for m in ("torch", "numpy") if m in sys.modules]
    if portable and late and _state["portable"] is None:
        print(f"warning: repro.portable: {', '.join(late)} loaded before the pin; kernels may not be pinned",
              file=sys.stderr)
    if portable:
        for key, value in PORTABLE_ENV.items():
            if os.environ.get(key) not in (None, value):
                _state["overridden"][key] = os.environ[key]
            os.environ[key] = value
    _keep_freed_memory()
    _state["portable"] = portable


def portable() -> bool:
    return bool(_state["portable"])


def n_threads() -> int:
    """Intra-op threads for torch: 1 when portable, else one per core of the CPU affinity."""
    return 1 if portable() else max(1, len(os.sched_getaffinity(0)))


def describe() -> dict:
    """What the numerical path is, for metrics files and error reports."""
    import torch

    return {"portable": portable(), "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "overridden_env": dict(_state["overridden"])}
