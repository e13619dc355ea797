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


def _cpu_flags(cpu_flags: str | None = None) -> set[str]:
    """The CPU's feature flags, from ``/proc/cpuinfo`` (or ``cpu_flags``); empty where it cannot be read."""
    if cpu_flags is None:
        try:
            cpu_flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    return set(cpu_flags.split())


# The CPU kernels that decide the precision, best first: the flag in /proc/cpuinfo and the name printed.
KERNELS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("avx2", "AVX2"))


def cpu_kernels(cpu_flags: str | None = None) -> list[str]:
    """Which of AMX-BF16, AVX512-BF16 and AVX2 this CPU has (``/proc/cpuinfo``, or ``cpu_flags``), best first."""
    flags = _cpu_flags(cpu_flags)
    return [name for flag, name in KERNELS if flag in flags]


def bf16_native(device: str | torch.device | None = None, cpu_flags: str | None = None) -> bool:
    """Whether ``device`` (default: CUDA when available, else CPU) computes bfloat16 natively, so that
    training under bfloat16 autocast is faster: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or
    AMX-BF16 (read from ``/proc/cpuinfo``, or from ``cpu_flags``). Elsewhere bfloat16 would be
    emulated, and slower. The environment variable ``GTCREC_BF16`` overrides the answer: ``0`` trains
    as a machine without bfloat16 units would (float32), ``1`` forces bfloat16. Text encoding runs in
    float32 either way (``gtcrec.embeddings``)."""
    forced = os.environ.get(BF16_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"${BF16_ENV} must be 0 or 1, got {forced!r}")
        return forced == "1"
    device = torch.device(device) if device is not None else get_device()
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(set(cpu_kernels(cpu_flags)) & {"AMX-BF16", "AVX512-BF16"})


def describe_precision(bf16: bool | None = None, cpu_flags: str | None = None) -> str:
    """One line for ``make run``: the precision training will use (``bf16``, default :func:`bf16_native`), why,
    and which CPU kernels were found, e.g. ``bfloat16 training (CPU kernels found: AMX-BF16, AVX512-BF16,
    AVX2); text encoding in float32``."""
    bf16 = bf16_native(cpu_flags=cpu_flags) if bf16 is None else bf16
    if get_device().type == "cuda":
        why = f"CUDA GPU {'with' if bf16 else 'without'} bfloat16"
    else:
        found = cpu_kernels(cpu_flags)
        why = f"CPU kernels found: {', '.join(found) if found else 'none of AMX-BF16, AVX512-BF16, AVX2'}"
    forced = os.environ.get(BF16_ENV, "").strip()
    if forced:
        why = f"{BF16_ENV}={forced}; {why}"
    elif not bf16:
        why = f"no native bfloat16; {why}"
    return f"{'bfloat16' if bf16 else 'float32'} training ({why}); text encoding in float32"
