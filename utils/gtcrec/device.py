"""Where work runs: the device, and whether it computes bfloat16 natively (used by text encoding and
training alike)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

BF16_ENV = "GTCREC_BF16"  # "0": float32 everywhere, as on a CPU without bfloat16 units; "1": bfloat16 even where emulated
# torch's intra-op threads, when set, in every process that imports this module (gtcrec.model imports it,
# and so every training notebook's kernel). Unlike OMP_NUM_THREADS it leaves other pools alone
# (pyarrow sizes its CPU pool from OMP_NUM_THREADS). The test suite sets it under two pytest-xdist workers, so
# that the two do not oversubscribe two cores.
THREADS_ENV = "GTCREC_TORCH_THREADS"
if os.environ.get(THREADS_ENV, "").strip():
    torch.set_num_threads(int(os.environ[THREADS_ENV]))


def get_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_native(device: str | torch.device | None = None, cpu_flags: str | None = None) -> bool:
    """Whether ``device`` (default: CUDA when available, else CPU) computes bfloat16 natively, so that
    work under bfloat16 autocast is faster: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or
    AMX-BF16 (read from ``/proc/cpuinfo``, or from ``cpu_flags``). Elsewhere bfloat16 would be
    emulated, and slower. The environment variable ``GTCREC_BF16`` overrides the answer: ``0`` runs the
    series as a machine without bfloat16 units would (float32 training and text encoding), ``1`` forces
    bfloat16."""
    forced = os.environ.get(BF16_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"${BF16_ENV} must be 0 or 1, got {forced!r}")
        return forced == "1"
    device = torch.device(device) if device is not None else get_device()
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if cpu_flags is None:
        try:
            cpu_flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return bool(set(cpu_flags.split()) & {"avx512_bf16", "amx_bf16"})
