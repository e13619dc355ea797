"""Serving: Merlin Systems operators and export for a CPU Triton, a Triton server manager, a client.

* ``gtcrec.serving.server``: ``TritonServer`` (start/stop a real ``tritonserver``), ``find_tritonserver``.
* ``gtcrec.serving.operators``: ``SessionizeClicks``, ``TorchScriptTopK``, ``DecodeTopK`` and the
  request/answer contract.
* ``gtcrec.serving.export``: ``build_ensemble``, ``export_ensemble`` (python or PyTorch backend,
  lean / Merlin / stock executor, optional dynamic batching), ``choose_backend``, ``graph_table``.
* ``gtcrec.serving.executor_model``: the python-backend ``model.py`` written into the repository
  (lean executor, short ``bad request`` errors, dynamic batching).
* ``gtcrec.serving.click_log``: the served model's click log (the writer), copied next to ``model.py``.
* ``gtcrec.serving.client``: clicks DataFrame -> tritonclient inputs -> answer DataFrame.
* ``gtcrec.serving.load``: latency, closed-loop load test, perf_analyzer, bare model forward.
* ``gtcrec.serving.parity``: served vs the model's offline ranking.
* ``gtcrec.serving.postprocess``: the post-processing step in numpy, torch, pandas and cudf.
* ``gtcrec.serving.repository``: the model repository's state (versions served and held, a version's
  settings, history, lock, archive), shared by ``gtcrec-serve``'s healing and the catalog swap.
* ``gtcrec.serving.serve``: the ``gtcrec-serve`` command; ``gtcrec.serving.balancer``: HAProxy in front
  of replicas; ``gtcrec.serving.access``: the control key.

Inputs that are not ordinary (empty requests, unknown talks, bad timestamps, ...) and what the
server does with each are listed in ``gtcrec.serving.operators``.

Importing this package is cheap: torch and Merlin load only with ``operators``/``export``.
"""
from gtcrec.serving.server import (PortInUseError, TritonBinary, TritonServer, TritonServerError,
                                   find_tritonserver, free_ports)

__all__ = ["TritonServer", "TritonServerError", "PortInUseError", "TritonBinary", "find_tritonserver",
           "free_ports"]
