"""The click order: ONE rule for training and serving.

The ETL (:mod:`gtcrec.etl`, the Groupby of the NVTabular workflow), the serving operator
(:class:`gtcrec.serving.operators.SessionizeClicks`) and :func:`gtcrec.data.load_clicks` all order
clicks with the two functions below. They use numpy only, because a self-contained export pickles
this module by value together with the operators (:func:`gtcrec.serving.export.export_ensemble`):
the Triton server must not need the rest of gtcrec to run them.
"""
from __future__ import annotations

import numpy as np

CLICK_ORDER_RULE = ("within a session, clicks are ordered by timestamp; clicks with the same timestamp "
                    "by talk id, compared as text (Unicode code points, the same as UTF-8 bytes)")


def text_rank(ids) -> np.ndarray:
    """Integers that order ``ids`` as their text does: equal ids get equal ranks, and
    ``text_rank(ids)[i] < text_rank(ids)[j]`` exactly when ``ids[i] < ids[j]`` as text.

    ``ids``: str or bytes, possibly mixed; str is compared as its UTF-8 bytes, whose order is
    the order of Unicode code points, i.e. how Python compares str."""
    first: dict = {}  # distinct ids in order of appearance; only those are sorted
    seen = np.fromiter((first.setdefault(v if isinstance(v, bytes) else str(v).encode("utf-8"), len(first))
                        for v in np.asarray(ids, dtype=object).ravel()), dtype=np.int64)
    distinct = list(first)
    rank_of = np.empty(len(distinct), dtype=np.int64)
    rank_of[sorted(range(len(distinct)), key=distinct.__getitem__)] = np.arange(len(distinct), dtype=np.int64)
    return rank_of[seen]


def click_order(sessions, timestamps, talk_ranks) -> np.ndarray:
    """THE click order (``CLICK_ORDER_RULE``): the permutation that sorts clicks by session,
    then timestamp, then talk id text.

    ``sessions``: integer session keys (any numbering: only equality matters for the order
    within a session); ``timestamps``: integers (epoch milliseconds on both the ETL and the
    serving path); ``talk_ranks``: :func:`text_rank` of the talk ids (or of the whole vocabulary,
    indexed by code: any ranks that order the ids as their text does give the same result).

    Clicks that tie on all three keys are the same talk at the same time of the same session,
    interchangeable: so the same clicks, given in any order, always come out as the same
    sequence of talks. That is what keeps the model input of serving equal to training's."""
    return np.lexsort((np.asarray(talk_ranks), np.asarray(timestamps), np.asarray(sessions)))
