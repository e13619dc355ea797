"""Merlin Systems (23.08) operators of the serving graph; they run in-process and inside the
python-backend ``executor_model`` of a CPU-only Triton.

The request is the raw clicks of one or more sessions, in any order:

===============  ======  =================================================================
``session_id``   BYTES   session key of each click
``talk_id``      BYTES   catalog talk id of each click (unknown ids are allowed)
``timestamp``    INT64   click time as epoch **milliseconds** (only the order matters)
===============  ======  =================================================================

The graph is a chain ``SessionizeClicks >> TorchScriptTopK >> DecodeTopK`` (or ``FaissTopK`` in the model's
place: the retrieval path of large catalogs; a chain, because
the 23.08 executor does not cache node outputs: a branch that reads an upstream node twice
runs it twice). Its answer, one row per session in order of first appearance in the request:

===============  ======  =================================================================
``session_ids``  BYTES   (n_sessions,)
``talk_ids``     BYTES   (n_sessions, k) recommended talks, best first
``scores``       FP32    (n_sessions, k) model scores; NaN where the talk came from the
                         fallback instead of the model
===============  ======  =================================================================

Codes follow the training vocabulary (NVTabular Categorify with ``vocabs=``): 0 padding,
1 null, 2 out-of-vocabulary, the talk at catalog position ``i`` has code ``i + 3``.

Fallback: a session whose clicks are all unknown talks never reaches the model; it gets the
``k`` most popular talks (``popularity`` given at export, aligned with the vocabulary; catalog
order when none is given). The same ranking fills a model answer that runs short after the
talks the session already clicked are removed. Override ``DecodeTopK.fallback`` to change it.

Inputs that are not ordinary, and what the server does with them (tested against a running
server in ``tests/unit/test_bad_inputs.py``; "refused" means the request fails with the quoted
message and the server keeps serving):

=================================  ================================================================
empty request (0 clicks)           answered: 0 sessions, ``talk_ids``/``scores`` of shape (0, k)
all talks of a session unknown     fallback: the ``k`` most popular talks, scores NaN
unknown talks among known ones     unknown clicks are dropped; the rest goes to the model
repeated clicks on a talk          kept in the model input, as in training (the ETL keeps them);
                                   a clicked talk is never recommended
more than ``max_len`` clicks       the last ``max_len`` known clicks (by time) reach the model;
                                   every clicked talk is still excluded from the answer
unsorted timestamps                sorted per session by ``click_order``: by time, equal times by
                                   talk id text (the ETL's rule), so any request order gives the
                                   same model input
negative timestamps                refused: ``bad request: ... timestamps are negative ...``
NaN / non-integer timestamps       refused by Triton (the input is INT64; FP32 is a datatype
                                   error); in-process, NaN is refused with ``bad request``
missing input / wrong datatype     refused by Triton itself (it checks names and types
                                   against the model configuration)
inputs of different lengths        refused: ``bad request: session_id, talk_id and timestamp
                                   differ in length``
inputs that are not 1-D            refused by Triton (``dims: [-1]``)
non-UTF-8 bytes in a talk id       an unknown talk (ids are compared as exact bytes)
non-UTF-8 bytes in a session id    answered; the id comes back byte for byte
more than ``max_clicks`` clicks    refused: ``bad request: ... split it`` (default 1,000,000;
                                   10,000 sessions of ~10 clicks are answered in one request)
k > catalog size, K of the model   refused when the ensemble is built (``k must be in 1..N``;
< k                                ``the model returns K candidates, fewer than k``)
fewer than k unclicked talks left  the missing slots are ``b""`` with score NaN
=================================  ================================================================

Every operator also has ``transform_arrays(dict) -> dict`` on plain numpy arrays: the lean
executor (``gtcrec/serving/executor_model.py``) chains those inside Triton without Merlin's
per-call schema work; ``transform`` (Merlin's executor, in-process) wraps the same code.
That code lives in a core class per operator (``SessionizeCore``, ``TopKCore``, ``FaissTopKCore``,
``DecodeCore``) that imports nothing of Merlin; the operator adds Merlin's schema methods. An export writes the
chain as its cores into the version (``lean_chain.pkl``, :func:`lean_copy`), and the lean executor loads that
instead of the Merlin ensemble: importing Merlin was most of a python-backend process's start.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

import merlin.dtypes as md
from merlin.dag import BaseOperator, ColumnSelector
from merlin.dag.operator import DataFormats
from merlin.schema import ColumnSchema, Schema, Tags
from merlin.table import TensorTable

# The code layout (gtcrec.layout, which imports nothing): a self-contained export pickles these
# operators by value, and cloudpickle stores these names' values, so the server needs no gtcrec.
from gtcrec.layout import FIRST_CODE, ITEM_LIST, NULL, OOV, PAD  # noqa: F401
# The click order of training and serving (gtcrec.order, numpy only): a self-contained export
# pickles that module by value too.
from gtcrec.order import CLICK_ORDER_RULE, click_order, text_rank  # noqa: F401

MAX_CLICKS = 1_000_000  # default cap on the clicks of one request
# DecodeTopK drops clicked talks with a dense (sessions x codes) table up to this many cells, and
# with a sorted key lookup (np.isin) above it: the table is ~2x faster for small requests.
DENSE_CLICKED_LIMIT = 4_000_000


class BadRequest(ValueError):
    """The request breaks the contract; the message says how. The executor answers it as
    ``bad request: <message>`` (a client error) instead of a server-side traceback."""

    bad_request = True  # checked by attribute: the class may be pickled by value

# Names of the columns flowing through the graph
# ITEM_LIST (gtcrec.layout): ragged codes fed to the model (the T4R input name)
SESSIONS = "sessions"  # per session, order of first appearance
CLICKED = "clicked"  # ragged: every known talk the session clicked (for removal)
MODEL_ROW = "model_row"  # per session: row in the model's output, -1 when it has no known click
TOPK_SCORES = "topk_scores__0"  # model outputs; the __<index> suffix also suits Triton's
TOPK_CODES = "topk_codes__1"  # PyTorch backend naming rule for outputs
OUT_SESSIONS, OUT_TALKS, OUT_SCORES = "session_ids", "talk_ids", "scores"

# Strings travel as numpy object arrays of bytes. Their schema dtype is `object`, not
# `md.string`: the executor casts outputs to the schema dtype, and `astype("str")` turns the
# bytes into a numpy unicode array, which the python backend refuses ("NumPy dtype is not
# supported", HTTP 500), and fails outright on non-ASCII ids. `object` still maps to Triton
# TYPE_STRING (BYTES) and is left untouched.
STRING = md.object_


def _as_bytes_array(values) -> np.ndarray:
    """A 1-D object array of bytes from bytes, str or a numpy string array."""
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        return arr.astype(object)
    if arr.dtype.kind == "U" or (arr.dtype == object and arr.size and isinstance(arr.flat[0], str)):
        return np.array([v.encode("utf-8") if isinstance(v, str) else v for v in arr.ravel()], dtype=object)
    return arr.astype(object, copy=False).ravel()


def _vocab_list(vocab: Sequence[str]) -> list[str]:
    items = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in vocab]
    if len(set(items)) != len(items):
        raise ValueError("the vocabulary has duplicate talk ids")
    if not items:
        raise ValueError("the vocabulary is empty")
    return items


def _ragged(values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(values), np.ascontiguousarray(offsets, dtype=np.int64)


class SessionizeCore:
    """The part of :class:`SessionizeClicks` that needs no Merlin (numpy and torch only): the lean executor
    runs it from a version's ``lean_chain.pkl`` (:func:`lean_copy`)."""

    def __init__(self, vocab: Sequence[str], max_len: int = 20, session_col: str = "session_id",
                 item_col: str = "talk_id", time_col: str = "timestamp", max_clicks: int = MAX_CLICKS,
                 pad: bool = False):
        super().__init__()
        if max_len < 1:
            raise ValueError("max_len must be >= 1")
        self.vocab = _vocab_list(vocab)
        self.max_len = int(max_len)
        self.max_clicks = int(max_clicks)
        self.pad = bool(pad)
        self.session_col, self.item_col, self.time_col = session_col, item_col, time_col
        self._lookup: dict | None = None
        self._text_ranks: np.ndarray | None = None

    # lookup tables are rebuilt after unpickling (smaller pickle, no duplicated state)
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_lookup"] = None
        state["_text_ranks"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("_text_ranks", None)  # pickled before the tie rule existed

    @property
    def lookup(self) -> dict:
        if self._lookup is None:
            table = {}
            for i, talk in enumerate(self.vocab):
                table[talk] = i + FIRST_CODE
                table[talk.encode("utf-8")] = i + FIRST_CODE
            self._lookup = table
        return self._lookup

    @property
    def text_ranks(self) -> np.ndarray:
        """Per code: :func:`text_rank` of its talk id within the vocabulary (reserved codes -1),
        the tie-breaking key of :func:`click_order`, computed once."""
        if self._text_ranks is None:
            self._text_ranks = np.concatenate([np.full(FIRST_CODE, -1, dtype=np.int64), text_rank(self.vocab)])
        return self._text_ranks

    @property
    def n_codes(self) -> int:
        return len(self.vocab) + FIRST_CODE

    def encode(self, talk_ids) -> np.ndarray:
        """Talk ids (bytes or str) -> codes; unknown -> 2."""
        lookup = self.lookup
        return np.fromiter((lookup.get(t, OOV) for t in talk_ids), dtype=np.int64, count=len(talk_ids))

    def sessionize(self, session_ids, talk_ids, timestamps) -> dict[str, np.ndarray]:
        """The transform on plain arrays; returns a dict of numpy arrays (ragged as __values/__offsets)."""
        sessions_in = _as_bytes_array(session_ids)
        talks = np.asarray(talk_ids).ravel()
        times = self.check_timestamps(timestamps)
        n = len(sessions_in)
        if len(talks) != n or len(times) != n:
            raise BadRequest(f"session_id, talk_id and timestamp differ in length: {n}, {len(talks)}, {len(times)}")
        if n > self.max_clicks:
            raise BadRequest(f"{n:,} clicks in one request, more than max_clicks={self.max_clicks:,}: split it")

        first_seen: dict = {}
        sess_idx = np.fromiter((first_seen.setdefault(s, len(first_seen)) for s in sessions_in),
                               dtype=np.int64, count=n)
        n_sessions = len(first_seen)
        sessions = np.empty(n_sessions, dtype=object)
        for key, i in first_seen.items():
            sessions[i] = key

        codes = self.encode(talks)
        order = click_order(sess_idx, times, self.text_ranks[codes])  # the one rule, as the ETL
        codes, sess_idx = codes[order], sess_idx[order]
        known = codes >= FIRST_CODE
        codes, sess_idx = codes[known], sess_idx[known]

        counts = np.bincount(sess_idx, minlength=n_sessions).astype(np.int64)
        clicked_offsets = np.zeros(n_sessions + 1, dtype=np.int64)
        np.cumsum(counts, out=clicked_offsets[1:])

        # keep the last max_len known clicks of each session
        position = np.arange(len(codes), dtype=np.int64)
        keep = (clicked_offsets[sess_idx + 1] - position) <= self.max_len
        has_items = counts > 0
        model_row = np.where(has_items, np.cumsum(has_items) - 1, -1).astype(np.int64)
        lengths = np.minimum(counts[has_items], self.max_len)
        list_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=list_offsets[1:])

        values, offsets = _ragged(codes[keep], list_offsets)
        if self.pad and len(lengths):  # every session right-padded with code 0 to max_len values
            dense = np.zeros((len(lengths), self.max_len), dtype=np.int64)
            dense[np.repeat(np.arange(len(lengths)), lengths),
                  np.arange(len(values)) - np.repeat(list_offsets[:-1], lengths)] = values
            values = dense.ravel()
            offsets = np.arange(len(lengths) + 1, dtype=np.int64) * self.max_len
        clicked_values, clicked_offsets = _ragged(codes, clicked_offsets)
        return {
            f"{ITEM_LIST}__values": values, f"{ITEM_LIST}__offsets": offsets,
            SESSIONS: sessions,
            f"{CLICKED}__values": clicked_values, f"{CLICKED}__offsets": clicked_offsets,
            MODEL_ROW: model_row,
        }

    def check_timestamps(self, timestamps) -> np.ndarray:
        """Timestamps as a 1-D int64 array; NaN, non-numbers and negative values are refused."""
        times = np.asarray(timestamps)
        if times.ndim > 1:
            times = times.ravel()
        if times.dtype.kind == "f":
            bad = ~np.isfinite(times)
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                raise BadRequest(f"{int(bad.sum())} timestamps are NaN or infinite (first at click {first}); "
                                 "send epoch milliseconds as int64")
            times = times.astype(np.int64)
        elif times.dtype.kind not in "iu" and len(times):
            raise BadRequest(f"timestamp must be int64 epoch milliseconds, got dtype {times.dtype}")
        if len(times) and times.min() < 0:
            neg = np.flatnonzero(times < 0)
            raise BadRequest(f"{len(neg)} timestamps are negative (first at click {int(neg[0])}: "
                             f"{int(times[neg[0]])}); send epoch milliseconds >= 0")
        return times.astype(np.int64, copy=False)

    def transform_arrays(self, arrays: dict) -> dict:
        return self.sessionize(arrays[self.session_col], arrays[self.item_col], arrays[self.time_col])


class SessionizeClicks(SessionizeCore, BaseOperator):
    """Raw clicks -> model input and what post-processing needs (numpy only, no pandas).

    Groups clicks by session (sessions keep their order of first appearance), sorts each
    session by :func:`click_order` (time, ties by talk id text: the ETL's rule), maps talk ids to training codes, drops unknown
    talks, keeps the last ``max_len`` clicks. Outputs ``item_id-list`` (ragged, only sessions
    with at least one known click), ``sessions``, ``clicked`` (ragged, all known clicks) and
    ``model_row``.

    ``pad=True`` right-pads every session of ``item_id-list`` with code 0 (padding) to exactly
    ``max_len`` values. Transformers4Rec pads a ragged batch to its LONGEST session (at most
    ``max_len``), and a session's scores change with that length (by up to ~0.05 on an XLNet
    model); padding every session to ``max_len`` makes a session's answer independent of the
    other sessions of the request (and of dynamic batching), and matches training and offline
    evaluation, whose batches of hundreds of sessions nearly always reach ``max_len``.
    """

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE

    def compute_selector(self, input_schema, selector, parents_selector=None, dependencies_selector=None):
        return ColumnSelector([self.session_col, self.item_col, self.time_col])

    def compute_output_schema(self, input_schema, col_selector, prev_output_schema=None) -> Schema:
        domain = {"domain": {"min": 0, "max": self.n_codes - 1, "name": ITEM_LIST}}
        return Schema([
            ColumnSchema(ITEM_LIST, dtype=md.int64, is_list=True, is_ragged=True, properties=domain,
                         tags=[Tags.ITEM_ID, Tags.ITEM, Tags.CATEGORICAL, Tags.LIST]),
            ColumnSchema(SESSIONS, dtype=STRING),
            ColumnSchema(CLICKED, dtype=md.int64, is_list=True, is_ragged=True),
            ColumnSchema(MODEL_ROW, dtype=md.int64),
        ])

    def transform(self, col_selector: ColumnSelector, transformable):
        out = self.sessionize(transformable[self.session_col].values, transformable[self.item_col].values,
                              transformable[self.time_col].values)
        return TensorTable(out)


class TopKCore:
    """The part of :class:`TorchScriptTopK` that needs no Merlin (numpy and torch only): the lean executor
    runs it from a version's ``lean_chain.pkl`` (:func:`lean_copy`)."""

    def __init__(self, torchscript, input_col: str = ITEM_LIST, call: str = "dict",
                 passthrough: bool = True, num_threads: int | None = 1,
                 artifact_name: str = "topk_model.pt"):
        super().__init__()
        if call not in ("dict", "positional"):
            raise ValueError("call must be 'dict' or 'positional'")
        self.input_col, self.call, self.passthrough = input_col, call, passthrough
        self.num_threads = num_threads
        self.artifact_name = artifact_name
        self.source_path: str | None = None
        self._model = None
        if isinstance(torchscript, (str, os.PathLike)):
            self.source_path = str(Path(torchscript).resolve())
            self._model = self._load(self.source_path)
        elif torchscript is not None:
            self._model = torchscript
        self.k_model = self._probe_k() if self._model is not None else None

    @staticmethod
    def _load(path):
        import torch

        model = torch.jit.load(str(path), map_location="cpu")
        model.eval()
        return model

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_model"] = None
        return state

    @property
    def model(self):
        if self._model is None:
            raise RuntimeError("TorchScriptTopK has no model: load_artifacts(path) was not called")
        return self._model

    def save_artifacts(self, artifact_path=None) -> None:
        if not artifact_path:
            return
        target = Path(artifact_path) / self.artifact_name
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.source_path and Path(self.source_path).is_file():
            shutil.copyfile(self.source_path, target)
        else:
            import torch

            torch.jit.save(self.model, str(target))

    def load_artifacts(self, artifact_path=None) -> None:
        if not artifact_path:  # Graph() calls load_artifacts(""): keep what we have
            return
        path = Path(artifact_path) / self.artifact_name
        if not path.is_file():
            raise FileNotFoundError(f"TorchScriptTopK artifact {path} is missing")
        self._model = self._load(path)
        if self.num_threads:
            # loaded from an exported repository: this is the serving process (a python-backend
            # stub per instance), so set the thread count once instead of around every call
            import torch

            torch.set_num_threads(int(self.num_threads))

    def predict(self, values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on ragged codes; returns (scores float32, codes int64), both (n, K)."""
        n_sessions = len(offsets) - 1
        if n_sessions == 0:
            k = self.k_model or 0
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        result = self.run_model(values, offsets)
        if isinstance(result, dict):
            result = tuple(result.values())
        scores, codes = result[0], result[1]
        scores = scores.detach().cpu().numpy().astype(np.float32, copy=False)
        codes = codes.detach().cpu().numpy().astype(np.int64, copy=False)
        if scores.shape != codes.shape or scores.shape[0] != n_sessions:
            raise ValueError(f"model returned scores {scores.shape} and codes {codes.shape} for {n_sessions} sessions")
        return scores, codes

    def run_model(self, values: np.ndarray, offsets: np.ndarray, extra: dict | None = None):
        """The TorchScript model's raw output for ragged codes, with ``num_threads`` intra-op threads.
        ``extra``: more named inputs (numpy arrays) for a model called with a dict."""
        import torch

        vals = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64))
        offs = torch.from_numpy(np.ascontiguousarray(offsets, dtype=np.int64))
        threads = torch.get_num_threads()
        if self.num_threads and threads != self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        try:
            with torch.inference_mode():
                if self.call == "dict":
                    inputs = {f"{self.input_col}__values": vals, f"{self.input_col}__offsets": offs}
                    inputs.update({name: torch.from_numpy(array) for name, array in (extra or {}).items()})
                    result = self.model(inputs)
                else:
                    result = self.model(vals, offs)
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        return result

    def _probe_k(self) -> int:
        """K, the number of candidates the model returns (one dummy session of code 3)."""
        scores, _ = self.predict(np.array([FIRST_CODE, FIRST_CODE], np.int64), np.array([0, 2], np.int64))
        return int(scores.shape[1])

    def transform_arrays(self, arrays: dict) -> dict:
        scores, codes = self.predict(arrays[f"{self.input_col}__values"], arrays[f"{self.input_col}__offsets"])
        out = dict(arrays) if self.passthrough else {}
        out[TOPK_SCORES], out[TOPK_CODES] = scores, codes
        return out


class TorchScriptTopK(TopKCore, BaseOperator):
    """Runs a TorchScript top-k model (e.g. a traced Transformers4Rec model with ``top_k`` set).

    The model takes ``item_id-list__values`` (int64, n) and ``item_id-list__offsets`` (int64,
    n_sessions + 1) — as one dict argument (``call="dict"``, how a model traced on a dataloader
    batch is called) or as two positional tensors (``call="positional"``) — and returns
    ``(scores float32 (n_sessions, K), codes int64 (n_sessions, K))``.

    Every input column is passed through (``passthrough=True``) so the next operator sees them
    without a second run of the upstream nodes. The TorchScript file travels through
    ``save_artifacts``/``load_artifacts``; ``load_artifacts("")`` (called by ``Graph``) does
    nothing. ``num_threads``: torch intra-op threads while the model runs (restored after each
    call in-process; ``None`` leaves torch's setting). One thread is the default: on a small,
    shared CPU the default thread pool made a tiny model ~500x slower (36 ms instead of 0.05 ms).
    """

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE

    def compute_output_schema(self, input_schema, col_selector, prev_output_schema=None) -> Schema:
        k = self.k_model
        out = Schema([ColumnSchema(TOPK_SCORES, dtype=md.float32, dims=(None, k)),
                      ColumnSchema(TOPK_CODES, dtype=md.int64, dims=(None, k))])
        if self.passthrough:
            out = Schema([c for name, c in input_schema.column_schemas.items()
                          if name not in (TOPK_SCORES, TOPK_CODES)]) + out
        return out

    def transform(self, col_selector: ColumnSelector, transformable):
        column = transformable[self.input_col]
        offsets = column.offsets if column.offsets is not None else np.arange(len(column.values) + 1)
        scores, codes = self.predict(column.values, offsets)
        out = {TOPK_SCORES: scores, TOPK_CODES: codes}
        if self.passthrough:
            table = TensorTable({name: col for name, col in transformable.items()})
            for name, arr in out.items():
                table[name] = TensorTable({name: arr})[name]
            return table
        return TensorTable(out)


ROWS_INPUT = "item_rows"  # the session encoder's second input: the vectors of the items a request clicked


def gather_rows(values: np.ndarray, rows_of) -> tuple[np.ndarray, np.ndarray]:
    """A request's codes -> ``(local codes, rows)`` for a session encoder that holds no item table
    (:func:`gtcrec.serving.retrieval.trace_query`): the distinct item codes (>= ``FIRST_CODE``) of the
    request, in code order, become ``FIRST_CODE``, ``FIRST_CODE + 1``, ...; reserved codes (padding,
    unknown) stay as they are; ``rows`` is ``rows_of(ids)``, the item vectors of those codes (id = code -
    ``FIRST_CODE``) as float32 ``(n_distinct, dim)``. So the encoder reads ``rows[local - FIRST_CODE]``
    where the model read ``table[code]``."""
    values = np.asarray(values, dtype=np.int64)
    items = values >= FIRST_CODE
    ids, inverse = np.unique(values[items] - FIRST_CODE, return_inverse=True)
    local = values.copy()
    local[items] = inverse.reshape(-1) + FIRST_CODE
    return local, np.ascontiguousarray(rows_of(ids), dtype=np.float32)


def index_spec(index) -> dict:
    """What a Faiss index is, enough to build another like it: its class name, size and dimension, and
    the HNSW settings (links per node, build and search breadth) when it is one."""
    spec = {"kind": type(index).__name__, "items": int(index.ntotal), "dim": int(index.d)}
    if hasattr(index, "hnsw"):
        spec.update(hnsw_m=int(index.hnsw.nb_neighbors(1)), ef_construction=int(index.hnsw.efConstruction),
                    ef_search=int(index.hnsw.efSearch))
    return spec


class FaissTopKCore(TopKCore):
    """The part of :class:`FaissTopK` that needs no Merlin (numpy and torch only): the lean executor
    runs it from a version's ``lean_chain.pkl`` (:func:`lean_copy`)."""

    def __init__(self, encoder, index, k_model: int, input_col: str = ITEM_LIST, passthrough: bool = True,
                 num_threads: int | None = 1, artifact_name: str = "session_encoder.pt",
                 index_name: str = "items.faiss"):
        self.index_name, self.fixed_k = index_name, int(k_model)
        self._index = self._read_index(index) if isinstance(index, (str, os.PathLike)) else index
        super().__init__(encoder, input_col=input_col, call="dict", passthrough=passthrough,
                         num_threads=num_threads, artifact_name=artifact_name)
        self.index_spec = index_spec(self._index) if self._index is not None else None  # read by the swap
        if self._index is not None and not 1 <= self.fixed_k <= self._index.ntotal:
            raise ValueError(f"k_model must be in 1..{self._index.ntotal} (the items in the index)")

    @staticmethod
    def _read_index(path):
        import faiss

        return faiss.read_index(str(path))

    def __getstate__(self):
        state = super().__getstate__()
        state["_index"] = None
        return state

    @property
    def index(self):
        if self._index is None:
            raise RuntimeError("FaissTopK has no index: load_artifacts(path) was not called")
        return self._index

    def save_artifacts(self, artifact_path=None) -> None:
        super().save_artifacts(artifact_path)
        if not artifact_path:
            return
        import faiss

        faiss.write_index(self.index, str(Path(artifact_path) / self.index_name))

    def load_artifacts(self, artifact_path=None) -> None:
        super().load_artifacts(artifact_path)
        if not artifact_path:
            return
        path = Path(artifact_path) / self.index_name
        if not path.is_file():
            raise FileNotFoundError(f"FaissTopK artifact {path} is missing")
        self._index = self._read_index(path)
        if self.num_threads:  # loaded from an exported repository: the serving process (see TorchScriptTopK)
            import faiss

            faiss.omp_set_num_threads(int(self.num_threads))

    def _probe_k(self) -> int:
        return self.fixed_k

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """The index's stored vectors of ``ids`` (flat and HNSW indexes keep them as they were added)."""
        if len(ids) == 0:
            return np.zeros((0, self.index.d), np.float32)
        return self.index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))

    def predict(self, values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ragged codes -> (scores float32, codes int64), both (n_sessions, k_model), best first;
        code -1 where the index found fewer items (``DecodeTopK`` drops it)."""
        n_sessions = len(offsets) - 1
        if n_sessions == 0:
            return np.zeros((0, self.fixed_k), np.float32), np.zeros((0, self.fixed_k), np.int64)
        local, rows = gather_rows(values, self._rows)
        queries = self.run_model(local, offsets, extra={ROWS_INPUT: rows})
        queries = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)
        scores, ids = self.index.search(queries, self.fixed_k)
        codes = np.where(ids >= 0, ids + FIRST_CODE, -1).astype(np.int64)
        return scores.astype(np.float32, copy=False), codes


class FaissTopK(FaissTopKCore, TorchScriptTopK):
    """The retrieval path's model step: a TorchScript **session encoder** (ragged codes and the clicked
    items' vectors -> one query vector per session, :func:`gtcrec.serving.retrieval.trace_query`) and a
    Faiss inner-product **index** over every item's output vector
    (:func:`gtcrec.serving.retrieval.item_vectors`; index id = code - ``FIRST_CODE``). The encoder
    holds no item: the vectors of the items a request clicked are read back from the index
    (:func:`gather_rows`), so the encoder is the same size for a thousand items or a million, and the
    index is the only per-item file. The encoder's query times the index's vectors is the model's
    score, so a flat index returns the model's own top ``k_model`` and HNSW an approximation of it;
    the columns out are those of :class:`TorchScriptTopK`, so ``DecodeTopK`` and both executors take
    it unchanged.

    Merlin Systems has ``QueryFaiss``, but it cannot serve this contract: it returns the ids of the
    first row only as one flat int32 array (several sessions in one request would run together), no
    scores (the answer's ``scores`` column), and the index ids as they are (here, codes are ids + 3).

    Both files travel through ``save_artifacts`` / ``load_artifacts``. ``num_threads`` also sets
    Faiss's OpenMP threads in the serving process (where ``load_artifacts`` reads the files), never in
    the process that builds the graph."""


class DecodeCore:
    """The part of :class:`DecodeTopK` that needs no Merlin (numpy and torch only): the lean executor
    runs it from a version's ``lean_chain.pkl`` (:func:`lean_copy`)."""

    def __init__(self, vocab: Sequence[str], k: int = 10, popularity: Sequence[float] | None = None,
                 exclude_clicked: bool = True):
        super().__init__()
        self.vocab = _vocab_list(vocab)
        if not 1 <= k <= len(self.vocab):
            raise ValueError(f"k must be in 1..{len(self.vocab)} (the catalog size)")
        self.k = int(k)
        self.exclude_clicked = exclude_clicked
        if popularity is not None:
            popularity = np.asarray(popularity, dtype=np.float64)
            if popularity.shape == (len(self.vocab) + FIRST_CODE,):  # per code: drop reserved rows
                popularity = popularity[FIRST_CODE:]
            if popularity.shape != (len(self.vocab),):
                raise ValueError(f"popularity must have one value per talk ({len(self.vocab)}), got {popularity.shape}")
        self.popularity = popularity
        self._ids = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_ids"] = None
        return state

    @property
    def n_codes(self) -> int:
        return len(self.vocab) + FIRST_CODE

    @property
    def id_table(self) -> np.ndarray:
        """code -> talk id (bytes); reserved codes map to b""."""
        if self._ids is None:
            self._ids = np.array([b""] * FIRST_CODE + [v.encode("utf-8") for v in self.vocab], dtype=object)
        return self._ids

    @property
    def fallback_ranking(self) -> np.ndarray:
        """Codes of all talks, most popular first."""
        if self.popularity is None:
            return np.arange(FIRST_CODE, self.n_codes, dtype=np.int64)
        return (np.argsort(-self.popularity, kind="stable") + FIRST_CODE).astype(np.int64)

    def fallback(self, exclude: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Hook: ``n`` codes (and scores) for a session, none of them in ``exclude``.

        Default: the most popular talks, score NaN (not a model score)."""
        ranking = self.fallback_ranking
        if len(exclude):
            ranking = ranking[~np.isin(ranking, exclude)]
        codes = ranking[:n]
        return codes, np.full(len(codes), np.nan, dtype=np.float32)

    def decode(self, sessions, clicked_values, clicked_offsets, model_row, scores, codes) -> dict[str, np.ndarray]:
        """The transform on plain arrays."""
        k, n_sessions = self.k, len(sessions)
        model_row = np.asarray(model_row, dtype=np.int64)
        clicked_offsets = np.asarray(clicked_offsets, dtype=np.int64)
        out_codes = np.zeros((n_sessions, k), dtype=np.int64)
        out_scores = np.full((n_sessions, k), np.nan, dtype=np.float32)
        counts = np.zeros(n_sessions, dtype=np.int64)

        has = np.flatnonzero(model_row >= 0)
        if len(has):
            rows = model_row[has]
            cand, cand_scores = codes[rows], scores[rows]
            valid = (cand >= FIRST_CODE) & (cand < self.n_codes)
            if self.exclude_clicked and len(clicked_values):
                sess_of_click = np.repeat(np.arange(n_sessions), np.diff(clicked_offsets))
                safe = np.where(valid, cand, 0)  # invalid candidates are dropped already
                if len(has) * self.n_codes <= DENSE_CLICKED_LIMIT:
                    # a (model row, code) table of clicked talks: one lookup per candidate
                    row_of = np.full(n_sessions, -1, dtype=np.int64)
                    row_of[has] = np.arange(len(has))
                    click_rows = row_of[sess_of_click]
                    on_row = click_rows >= 0  # always true: a session with a known click has a model row
                    seen = np.zeros((len(has), self.n_codes), dtype=bool)
                    seen[click_rows[on_row], clicked_values[on_row]] = True
                    valid &= ~seen[np.arange(len(has))[:, None], safe]
                else:
                    # large requests: a (session, code) pair key tells whether the session clicked it
                    clicked_keys = sess_of_click * self.n_codes + clicked_values
                    cand_keys = has[:, None] * self.n_codes + safe
                    valid &= ~np.isin(cand_keys, clicked_keys)
            rank = np.cumsum(valid, axis=1)
            take = valid & (rank <= k)
            r, c = np.nonzero(take)
            slot = rank[r, c] - 1
            out_codes[has[r], slot] = cand[r, c]
            out_scores[has[r], slot] = cand_scores[r, c]
            counts[has] = take.sum(axis=1)

        for i in np.flatnonzero(counts < k):  # sessions without known clicks, or short answers
            exclude = np.concatenate([clicked_values[clicked_offsets[i]:clicked_offsets[i + 1]],
                                      out_codes[i, :counts[i]]]) if self.exclude_clicked else out_codes[i, :counts[i]]
            fill, fill_scores = self.fallback(exclude, k - counts[i])
            out_codes[i, counts[i]:counts[i] + len(fill)] = fill
            out_scores[i, counts[i]:counts[i] + len(fill)] = fill_scores

        talk_ids = self.id_table[out_codes]
        return {OUT_SESSIONS: np.asarray(sessions, dtype=object), OUT_TALKS: talk_ids, OUT_SCORES: out_scores}

    def transform_arrays(self, arrays: dict) -> dict:
        return self.decode(arrays[SESSIONS], arrays[f"{CLICKED}__values"], arrays[f"{CLICKED}__offsets"],
                           arrays[MODEL_ROW], arrays[TOPK_SCORES], arrays[TOPK_CODES])


class DecodeTopK(DecodeCore, BaseOperator):
    """Model candidates -> the answer: removes talks the session already clicked (and reserved
    codes), keeps ``k``, maps codes back to talk ids, fills the gaps from the fallback.

    ``popularity``: one number per vocabulary entry (catalog order), or one per code (length
    ``len(vocab) + 3``, the reserved codes first: they are dropped); the fallback ranks talks by
    it (ties: catalog order). ``None`` ranks by catalog order.
    """

    @property
    def supported_formats(self) -> DataFormats:
        return DataFormats.NUMPY_TENSOR_TABLE

    def compute_selector(self, input_schema, selector, parents_selector=None, dependencies_selector=None):
        return ColumnSelector([SESSIONS, CLICKED, MODEL_ROW, TOPK_SCORES, TOPK_CODES])

    def compute_input_schema(self, root_schema, parents_schema, deps_schema, selector) -> Schema:
        return (parents_schema + deps_schema)[[SESSIONS, CLICKED, MODEL_ROW, TOPK_SCORES, TOPK_CODES]]

    def compute_output_schema(self, input_schema, col_selector, prev_output_schema=None) -> Schema:
        return Schema([
            ColumnSchema(OUT_SESSIONS, dtype=STRING),
            ColumnSchema(OUT_TALKS, dtype=STRING, dims=(None, self.k)),
            ColumnSchema(OUT_SCORES, dtype=md.float32, dims=(None, self.k)),
        ])

    def transform(self, col_selector: ColumnSelector, transformable):
        clicked = transformable[CLICKED]
        out = self.decode(transformable[SESSIONS].values, clicked.values, clicked.offsets,
                          transformable[MODEL_ROW].values, transformable[TOPK_SCORES].values,
                          transformable[TOPK_CODES].values)
        return TensorTable(out)


# ----------------------------------------------------------------------------------------------
# The lean chain without Merlin
# ----------------------------------------------------------------------------------------------

# gtcrec.serving.export writes a version's operators as their cores next to its ensemble/
# (executor_model.LEAN_CHAIN_FILE), so that the lean executor answers without importing Merlin: importing it was
# most of a python-backend process's start, and a load of a version starts one such process per instance.
CORES = {SessionizeClicks: SessionizeCore, TorchScriptTopK: TopKCore, FaissTopK: FaissTopKCore,
         DecodeTopK: DecodeCore}


def lean_copy(op):
    """``op`` (one of :data:`CORES`' operators, exactly: a subclass may answer otherwise) as its core: the same
    state, as pickling keeps it (a loaded model or index is left out; ``load_artifacts`` reads it back)."""
    core = CORES.get(type(op))
    if core is None:
        raise TypeError(f"{type(op).__name__} has no core that serves without Merlin")
    copy = object.__new__(core)
    state = op.__getstate__()
    if hasattr(core, "__setstate__"):
        copy.__setstate__(state)
    else:
        copy.__dict__.update(state)
    return copy
