"""The serving trace of a session model: TorchScript of its top-k codes, checked against eager.

:func:`trace_topk` wraps a T4R model (:class:`TopKCodes`: ragged item-list input -> top-k scores and
codes, reserved codes excluded) and traces it; :func:`check_traced` compares a trace with the eager
model.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from gtcrec import model as gm
from gtcrec.layout import RESERVED as N_RESERVED


class TopKCodes(torch.nn.Module):
    """Wraps a T4R model: ragged item-list input -> (top-k scores, top-k codes), reserved codes
    excluded. This is the module :func:`trace_topk` traces for serving. Integer inputs of any
    width (e.g. int32 offsets) are cast to int64 first."""

    def __init__(self, model, k: int, n_reserved: int = N_RESERVED):
        super().__init__()
        self.model = model
        self.k = int(k)
        self.n_reserved = int(n_reserved)

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        # int64 codes and offsets whatever the caller sends (Merlin's executor sends INT32
        # offsets; T4R's masking fails on int32 codes)
        inputs = {name: value if value.is_floating_point() else value.to(torch.int64)
                  for name, value in inputs.items()}
        scores = self.model(inputs)
        reserved = torch.arange(self.n_reserved, device=scores.device)
        scores = scores.index_fill(1, reserved, float("-inf"))
        return torch.topk(scores, self.k, dim=1)


def trace_topk(model, example_batch: Dict[str, torch.Tensor], k: int = 20
               ) -> torch.jit.ScriptModule:
    """TorchScript of ``model`` returning ``(scores, codes)`` of the top ``k`` codes per session.

    ``example_batch``: ragged input (``item_id-list__values`` / ``__offsets``, e.g. from
    :func:`sessions_to_batch` or merlin-dataloader); the traced module accepts ragged input of any
    batch size and lengths. Callers keep the last ``max_len`` items of longer sessions (and, for
    XLNet, pad every session to ``max_len`` with code 0, see :func:`sessions_to_batch`). The trace
    runs on the model's current device: move the model to the CPU first for CPU serving. The model
    is put in eval mode; call the result under ``torch.no_grad()``. Save with ``traced.save(path)``
    and load with ``torch.jit.load``.
    """
    if k < 1 or k > gm.n_codes(model) - N_RESERVED:
        raise ValueError(f"k must be in [1, {gm.n_codes(model) - N_RESERVED}]")
    model.eval()
    model.top_k = None
    device = gm.model_device(model)
    batch = {name: t.to(device) for name, t in example_batch.items()}
    wrapper = TopKCodes(model, k).eval()
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (batch,), strict=True, check_trace=False)
    return traced


def check_traced(traced, model, batch: Dict[str, torch.Tensor], atol: float = 1e-4
                 ) -> Dict[str, float]:
    """Check that the traced top-k agrees with the eager model on ``batch``.

    Compares scores within ``atol`` and requires every traced code's eager score to equal the
    traced score (so ties may permute codes); raises ``AssertionError`` otherwise. Returns the
    maximum differences.
    """
    model.eval()
    device = gm.model_device(model)
    batch = {name: t.to(device) for name, t in batch.items()}
    with torch.no_grad():
        t_scores, t_codes = traced({n: v.clone() for n, v in batch.items()})
        k = t_scores.shape[1]
        e_scores, e_codes = TopKCodes(model, k)({n: v.clone() for n, v in batch.items()})
        full = model({n: v.clone() for n, v in batch.items()})
    score_diff = float((t_scores - e_scores).abs().max())
    at_codes = torch.gather(full, 1, t_codes)
    code_diff = float((at_codes - t_scores).abs().max())
    if score_diff > atol or code_diff > atol:
        raise AssertionError(f"traced and eager disagree: score diff {score_diff:.3g}, "
                             f"score at traced codes diff {code_diff:.3g}")
    if int(t_codes.min()) < N_RESERVED or int(t_codes.max()) >= full.shape[1]:
        raise AssertionError("traced returned a reserved or out-of-range code")
    return {"max_score_diff": score_diff, "max_code_score_diff": code_diff,
            "same_codes": float((t_codes == e_codes).float().mean())}
