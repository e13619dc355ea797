"""Is the served answer the model's answer? Helpers for notebook 06 and the tests.

Two independent paths reach a recommendation for a test session:

* **served**: raw clicks -> ``SessionizeClicks`` (numpy, in Triton) -> the traced top-K model ->
  ``DecodeTopK``;
* **offline**: the same clicks -> the NVTabular ETL of notebook 01 (processed ``item_id-list``)
  -> the saved Transformers4Rec model in eager mode (every code scored) -> clicked talks and
  reserved codes removed -> the ``k`` best.

``link_sessions`` pairs the raw test sessions with the processed ones (the ETL numbers sessions
by start time, then by their original id), ``preprocessing_parity`` checks that serving builds
the same model input as the ETL, ``offline_topk`` ranks, ``compare_rankings`` compares with a
tolerance for ties: traced and eager scores differ by float rounding (~1e-6), which can swap two
talks whose scores are that close.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from gtcrec.serving import operators as ops


def link_sessions(raw_clicks: pd.DataFrame, processed: pd.DataFrame) -> pd.DataFrame:
    """``session_key`` (raw id) -> ``session_id`` (processed number) for the same sessions.

    The ETL numbers sessions by (first click time, original id); ranking the raw sessions the
    same way and the processed ids in increasing order pairs them. Sessions the ETL dropped
    cannot be paired: the counts must match."""
    start = raw_clicks.groupby("session_id")["timestamp"].min().reset_index()
    start["key"] = start["session_id"].astype(str)
    start = start.sort_values(["timestamp", "key"], kind="stable")
    ids = np.sort(processed["session_id"].to_numpy())
    if len(ids) != len(start):
        raise ValueError(f"{len(start)} raw sessions but {len(ids)} processed ones: they cannot be paired")
    return pd.DataFrame({"session_key": start["key"].to_numpy(), "session_id": ids})


def preprocessing_parity(sessionize: "ops.SessionizeClicks", request: dict[str, np.ndarray],
                         processed_lists: dict[str, np.ndarray]) -> dict:
    """Compare the model input serving builds from ``request`` with the ETL's lists.

    ``processed_lists``: raw session key (str) -> the ETL's ``item_id-list`` codes."""
    pre = sessionize.sessionize(request["session_id"], request["talk_id"], request["timestamp"])
    values, offsets = pre[f"{ops.ITEM_LIST}__values"], pre[f"{ops.ITEM_LIST}__offsets"]
    equal, compared, missing = 0, 0, 0
    for key, row in zip(pre[ops.SESSIONS], pre[ops.MODEL_ROW]):
        text = key.decode("utf-8") if isinstance(key, bytes) else str(key)
        if text not in processed_lists:
            missing += 1
            continue
        served = values[offsets[row]:offsets[row + 1]] if row >= 0 else np.zeros(0, np.int64)
        served = served[served != ops.PAD]  # padding to max_len, if the operator pads
        compared += 1
        equal += int(np.array_equal(served, np.asarray(processed_lists[text], dtype=np.int64)))
    return {"sessions": compared, "equal": equal, "unpaired": missing, "parity": compared > 0 and equal == compared}


def offline_topk(scores: np.ndarray, exclude: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` codes (and scores) per row of full scores ``(n, n_codes)``, leaving out reserved
    codes and each row's ``exclude`` codes. Ties: lower code first."""
    s = np.array(scores, dtype=np.float32, copy=True)
    s[:, :ops.FIRST_CODE] = -np.inf
    for i, codes in enumerate(exclude):
        codes = np.asarray(codes, dtype=np.int64)
        s[i, codes[(codes >= 0) & (codes < s.shape[1])]] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(s, order, axis=1)


def compare_rankings(served_codes: np.ndarray, served_scores: np.ndarray, offline_codes: np.ndarray,
                     full_scores: np.ndarray, atol: float = 1e-4) -> dict:
    """Served top-k vs offline top-k, slot by slot.

    Slots the fallback filled (served score NaN) are left out. A session is ``identical`` when
    every model slot holds the offline code; a ``tie_swap`` when it differs only where the eager
    scores of the two codes are within ``atol``; else ``different``. ``parity`` is true when no
    session is ``different`` and every served score is within ``atol`` (relative to the largest
    score, when above 1) of the eager score of the same code (``max_score_diff``)."""
    served_codes = np.asarray(served_codes, dtype=np.int64)
    model_slot = np.isfinite(served_scores)
    same = (served_codes == offline_codes) | ~model_slot
    identical = same.all(axis=1)
    safe = np.where(model_slot, served_codes, ops.FIRST_CODE)
    eager_at_served = np.take_along_axis(full_scores, safe, axis=1)
    eager_at_offline = np.take_along_axis(full_scores, offline_codes, axis=1)
    close = (np.abs(eager_at_served - eager_at_offline) <= atol) | ~model_slot
    tie_only = ~identical & close.all(axis=1)
    different = ~identical & ~tie_only
    diff = np.abs(np.where(model_slot, served_scores - eager_at_served, 0.0))
    max_diff = float(diff.max()) if diff.size else 0.0
    scale = max(1.0, float(np.abs(served_scores[model_slot]).max())) if model_slot.any() else 1.0
    return {"sessions": int(len(served_codes)), "identical": int(identical.sum()), "tie_swaps": int(tie_only.sum()),
            "different": int(different.sum()), "fallback_slots": int((~model_slot).sum()),
            "max_score_diff": max_diff,
            "parity": bool(len(served_codes) > 0 and not different.any() and max_diff <= atol * scale)}


def compare_answers(ids: np.ndarray, scores: np.ndarray, other_ids: np.ndarray, other_scores: np.ndarray,
                    atol: float = 1e-4) -> dict:
    """Two served answers to the same request (talk ids and scores, ``(sessions, k)``), slot by slot.

    A session is ``identical`` when every slot holds the same talk; a ``tie_swap`` when the talks differ
    only where the two answers' scores agree within ``atol`` (relative to the largest score, when above 1):
    talks of equal score, such as two talks with the same text, in another order (or another one of them
    at the last slot); else ``different``. A fallback slot (score NaN) must match a fallback slot.
    ``same_up_to_ties``: no session is ``different``."""
    ids, other_ids = np.asarray(ids).astype(str), np.asarray(other_ids).astype(str)
    scores, other_scores = np.asarray(scores, np.float64), np.asarray(other_scores, np.float64)
    finite = np.isfinite(scores) & np.isfinite(other_scores)
    scale = max(1.0, float(np.abs(scores[finite]).max())) if finite.any() else 1.0
    close = np.where(finite, np.abs(scores - other_scores) <= atol * scale, np.isnan(scores) & np.isnan(other_scores))
    identical = (ids == other_ids).all(axis=1)
    tie_swap = ~identical & close.all(axis=1)
    different = ~identical & ~tie_swap
    diff = np.abs(scores - other_scores)[finite]
    return {"sessions": int(len(ids)), "identical": int(identical.sum()), "tie_swaps": int(tie_swap.sum()),
            "different": int(different.sum()), "max_score_diff": float(diff.max()) if diff.size else 0.0,
            "same_up_to_ties": bool(len(ids) > 0 and not different.any())}


def frame_parity(answer: pd.DataFrame, reference: pd.DataFrame, exact: bool = True, rtol: float = 1e-5) -> dict:
    """Whether a served answer (``client.to_frame``) equals the reference frame, by pandas' own comparison:
    exactly (NaN equal to NaN: the fallback's scores) or within a relative ``rtol``. Returns ``equal`` and
    ``difference`` (pandas' description of the first one, or ""), so that notebook 06 shows the result on any
    data and the tests assert on it."""
    try:
        pd.testing.assert_frame_equal(answer, reference, check_exact=exact, rtol=rtol)
    except AssertionError as exc:
        return {"equal": False, "difference": str(exc).strip()[:2000]}
    return {"equal": True, "difference": ""}
