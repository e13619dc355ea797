"""Where work runs: the device, and whether it computes bfloat16 natively (used by text encoding and
training alike)."""
from __future__ import annotations

from pathlib import Path

import torch


def get_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_native(device: str | torch.device | None = None, cpu_flags: str | None = None) -> bool:
    """Whether ``device`` (default: CUDA when available, else CPU) computes bfloat16 natively, so that
    work under bfloat16 autocast is faster: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or
    AMX-BF16 (read from ``/proc/cpuinfo``, or from ``cpu_flags``). Elsewhere bfloat16 would be
    emulated, and slower."""
    device = torch.device(device) if device is not None else get_device()
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if cpu_flags is None:
        try:
            cpu_flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return bool(set(cpu_flags.split()) & {"avx512_bf16", "amx_bf16"})
