"""Which method serves a new catalog: the trained model, the model blended with text similarity, or
text similarity alone.

A model trained on one event does not always transfer to the next: on the generator it ranks a new
event's talks above text similarity, on a real rating log it ranked them below. Nothing about the new
event is known on the day of a swap, so the choice is measured on the TRAINING event, held out as if
it were a new one (:func:`transfer_check`):

1. the talks are split at random into two halves, "old" and "new", each with its own catalog, codes
   and item table;
2. the training sessions are cut to their clicks on old talks; the training AND validation sessions
   are cut to their clicks on new talks, for the evaluation (each keeps its order; sessions with
   fewer than two clicks left are dropped). The model never sees a new talk, and it has no memory of
   attendees, so a session whose old clicks it trained on is still a fair test on its new clicks; using
   every session keeps the measurement from being a few hundred sessions' noise;
3. the same architecture is trained on the old half, its table is swapped to the new half
   (:func:`gtcrec.model.swap_item_table`), and it ranks those sessions, against text similarity to
   the last click (and recency-weighted) on the same sessions, and against **blends**: the model's
   scores plus ``w`` x text similarity, for each weight ``w`` of :data:`BLEND_WEIGHTS` and each
   text mode.

Whichever of the three scores best is what a swap serves: the model (``w`` 0); the blend
(:meth:`gtcrec.representation.ItemRepresentation.set_text_blend`, one more block of columns in the
same output product); or text similarity alone, which needs no other model either: with its learned
parts set to zero (:func:`text_similarity_mode`) the model ranks exactly by that similarity (its
skip path, see :mod:`gtcrec.representation`). The decision is saved beside the trained model
(:func:`save_decision`) and applied by the swap (:func:`serve_as_decided`).
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Sequence

import numpy as np
import pandas as pd
import torch

from gtcrec.etl import RESERVED

DECISION_FILE = "new_catalog.json"
MODEL, TEXT, BLEND = "model", "text similarity", "model + text similarity"
BLEND_WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0)  # the text weights a check tries (the skip's gain starts at 5)
CHUNK_SESSIONS = 4096  # sessions a check scores at a time
RECENCY_DECAY = 0.5  # the recency-weighted text baseline's (gtcrec.baselines.TextSimilarityBaseline)
TEXT_NAMES = {0.0: "text: last click", RECENCY_DECAY: "text: recency-weighted"}  # the baselines' names


def split_talks(n_talks: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Talk positions (catalog order) of two random halves, each sorted: ``(old, new)``."""
    order = np.random.default_rng(seed).permutation(n_talks)
    half = n_talks // 2
    return np.sort(order[:half]), np.sort(order[half:])


def restrict(sessions: Sequence[np.ndarray], positions: np.ndarray, n_codes: int) -> list[np.ndarray]:
    """Sessions cut to their clicks on the talks at ``positions``, recoded to those talks' own codes
    (``RESERVED + index in positions``); sessions left with fewer than two clicks are dropped."""
    recode = np.full(n_codes, -1, dtype=np.int64)
    recode[np.asarray(positions) + RESERVED] = np.arange(len(positions)) + RESERVED
    out = []
    for s in sessions:
        codes = recode[np.asarray(s, dtype=np.int64)]
        codes = codes[codes >= 0]
        if len(codes) >= 2:
            out.append(codes)
    return out


def text_similarity_mode(model, decay: float = 0.0) -> Any:
    """Set the learned parts of a model with an ItemRepresentation and LastClickSkip to zero (adapter,
    field vectors, residuals, biases, the skip's projection) and the skip's ``decay``: it then ranks
    every talk by text similarity to the last click (``decay`` 0) or to the recency-weighted session
    (:data:`RECENCY_DECAY`, as the baseline), scaled by the skip's gain. Changes ``model`` in place."""
    from gtcrec import model as gm
    from gtcrec.representation import ItemRepresentation, LastClickSkip

    rep, block = gm.item_embedding(model), gm._task(model).task_block
    if not isinstance(rep, ItemRepresentation) or not isinstance(block, LastClickSkip):
        raise ValueError("text similarity mode needs an ItemRepresentation and the LastClickSkip block")
    with torch.no_grad():
        for tensor in (rep.adapter, rep.residual, rep.item_bias, block.proj.weight, block.proj.bias,
                       *(table.weight for table in rep.fields.values())):
            if tensor is not None:
                tensor.zero_()
        block.decay.fill_(float(decay))
    rep.set_text_blend(0.0)  # and forgets the kept table
    return model


def serve_as_decided(model, check: Dict[str, Any]) -> Any:
    """Put ``model`` in the mode a transfer check chose (``check``: :func:`transfer_check`'s result, or
    ``{}``: the model as trained): text-similarity mode, a blend, or nothing to change. In place."""
    choice = check.get("serves", MODEL)
    if choice == TEXT:
        return text_similarity_mode(model, check.get("text_decay", 0.0))
    if choice == BLEND:
        from gtcrec import model as gm

        blend = check["blend"]
        gm.item_embedding(model).set_text_blend(blend["text_weight"], blend["text_decay"])
    elif choice != MODEL:
        raise ValueError(f"unknown choice {choice!r} in a transfer check")
    return model


def _hits(scores: np.ndarray, targets: np.ndarray, prefixes: Sequence[np.ndarray]) -> int:
    """How many sessions have their target in the top 10 (clicked talks excluded)."""
    from gtcrec import metrics

    return int(round(metrics.evaluate_scores(scores, targets, exclude=prefixes)["recall@10"] * len(prefixes)))


def transfer_check(train_sessions: Sequence[np.ndarray], valid_sessions: Sequence[np.ndarray],
                   vectors: np.ndarray, catalog: pd.DataFrame, build: Callable, fit: Callable,
                   seed: int = 0) -> Dict[str, Any]:
    """Hold out half of the training event's talks as a new catalog and compare, on the training and
    validation sessions cut to those talks, the model trained on the other half (zero-shot) with text
    similarity to the last click.

    ``vectors``: the talks' text vectors in catalog order (``table[RESERVED:]``). ``build(schema,
    table, catalog, warm) -> model`` builds the architecture for a catalog; ``fit(model, folder)``
    trains it on the processed sessions in ``folder`` (parquet with the item-list column). Returns
    recall@10 of the model, of the better text mode and of the best blend, the number of sessions,
    and ``serves``: the best of the three (:data:`MODEL`, :data:`BLEND` or :data:`TEXT`; on a tie the
    one listed first), with ``blend`` (its ``text_weight`` and ``text_decay``) and ``text_decay``.
    """
    import tempfile

    from gtcrec import baselines, etl, metrics
    from gtcrec import model as gm
    from gtcrec.representation import catalog_fields, warm_codes

    n_talks = len(vectors)
    n_codes = n_talks + RESERVED
    old, new = split_talks(n_talks, seed)
    old_train = restrict(train_sessions, old, n_codes)
    new_valid = restrict([*train_sessions, *valid_sessions], new, n_codes)
    if not old_train or not new_valid:
        raise ValueError("too few sessions left on one half of the talks for a transfer check")
    old_table, new_table = etl.item_table(vectors[old]), etl.item_table(vectors[new])
    old_catalog = catalog.iloc[old].reset_index(drop=True)
    new_catalog = catalog.iloc[new].reset_index(drop=True)
    warm = warm_codes(old_train, len(old_table), RESERVED)
    model = build(gm.make_schema(len(old_table)), old_table, old_catalog, warm)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "old-half"
        folder.mkdir()
        pd.DataFrame({etl.ITEM_LIST: old_train}).to_parquet(folder / "part_0.parquet", index=False)
        fit(model, folder)
    rep = gm.item_embedding(model)
    gm.swap_item_table(model, new_table, fields=catalog_fields(new_catalog, getattr(rep, "field_names", ())))
    prefixes, targets = metrics.sessions_to_prefixes(new_valid)
    text = {0.0: baselines.TextSimilarityBaseline(new_table, "last"),
            RECENCY_DECAY: baselines.TextSimilarityBaseline(new_table, "recency", decay=RECENCY_DECAY)}
    # every row scored on the same sessions, a chunk at a time (two score matrices of one chunk in memory)
    hits: Dict[Any, int] = defaultdict(int)
    for start in range(0, len(prefixes), CHUNK_SESSIONS):
        chunk, chunk_targets = prefixes[start:start + CHUNK_SESSIONS], targets[start:start + CHUNK_SESSIONS]
        model_scores = gm.score_sessions(model, chunk)
        hits[MODEL] += _hits(model_scores, chunk_targets, chunk)
        for d, baseline in text.items():
            text_scores = baseline.scores(chunk)
            hits[d] += _hits(text_scores, chunk_targets, chunk)
            for w in BLEND_WEIGHTS:
                hits[w, d] += _hits(model_scores + w * text_scores, chunk_targets, chunk)
    recall_of = {row: found / len(prefixes) for row, found in hits.items()}
    text_recall = {d: recall_of[d] for d in text}
    decay = max(text_recall, key=lambda d: (text_recall[d], -d))  # the better text mode (ties: last click)
    blends = {(w, d): recall_of[w, d] for w in BLEND_WEIGHTS for d in text}
    weight, blend_decay = max(blends, key=lambda wd: (blends[wd], -wd[0], -wd[1]))  # ties: the lighter blend
    recall = {MODEL: recall_of[MODEL], BLEND: blends[weight, blend_decay], TEXT: text_recall[decay]}
    best = max(recall.values())
    return {"recall@10": recall, "text_recall@10": {TEXT_NAMES[d]: r for d, r in text_recall.items()},
            "blend_recall@10": {f"{w} x {TEXT_NAMES[d]}": r for (w, d), r in blends.items()},
            "blend": {"text_weight": weight, "text_decay": blend_decay}, "text_decay": decay,
            "sessions": len(prefixes), "talks": {"old": len(old), "new": len(new)},
            "serves": next(name for name in (MODEL, BLEND, TEXT) if recall[name] == best)}


def save_decision(model_dir: str | os.PathLike, check: Dict[str, Any]) -> Path:
    """Write the transfer check beside the saved model, for the swap to read."""
    path = Path(model_dir) / DECISION_FILE
    path.write_text(json.dumps(check, indent=2))
    return path


def decision(model_dir: str | os.PathLike) -> Dict[str, Any]:
    """The transfer check saved beside the model in ``model_dir`` (:func:`save_decision`); ``{}`` when
    none was saved."""
    path = Path(model_dir) / DECISION_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def serves(model_dir: str | os.PathLike) -> str:
    """What a swap serves for the model saved in ``model_dir``: :data:`MODEL`, :data:`BLEND` or
    :data:`TEXT`, as a transfer check saved there chose (a model without a check serves itself)."""
    return decision(model_dir).get("serves", MODEL)
