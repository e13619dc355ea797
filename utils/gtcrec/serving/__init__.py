"""Serving: Merlin Systems operators and export for a CPU Triton, a Triton server manager, a client.

* ``gtcrec.serving.server``: ``TritonServer`` (start/stop a real ``tritonserver``), ``find_tritonserver``.
* ``gtcrec.serving.operators``: ``SessionizeClicks``, ``TorchScriptTopK``, ``DecodeTopK`` and the
  request/answer contract.
* ``gtcrec.serving.export``: ``build_ensemble``, ``export_ensemble`` (python or PyTorch backend).
* ``gtcrec.serving.client``: clicks DataFrame -> tritonclient inputs -> answer DataFrame.

Importing this package is cheap: torch and Merlin load only with ``operators``/``export``.
"""
from gtcrec.serving.server import (PortInUseError, TritonBinary, TritonServer, TritonServerError,
                                   find_tritonserver, free_ports)

__all__ = ["TritonServer", "TritonServerError", "PortInUseError", "TritonBinary", "find_tritonserver",
           "free_ports"]
