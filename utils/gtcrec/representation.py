"""The item representation plugged into Transformers4Rec where it keeps its item table.

T4R looks items up in ``embedding_tables[item_col]`` (the input side) and, with weight tying, scores
every item with ``item_embedding_table.weight`` (the output side). :class:`ItemRepresentation`
takes that place. It is a ``torch.nn.Module`` with ``num_embeddings``, ``embedding_dim``, a
``weight`` (the whole table, computed) and ``forward(codes)`` (rows of the same table), so input
lookup and tied output use one representation:

    item_j = text_j                       frozen pre-trained text vector (row j of the old table)
           + text_j @ A                   shared linear adapter, zero-initialised: transfers
           + sum_f field_f[value_jf]      catalog fields (track, level, format, ...), zero-initialised,
                                          by value: a new event with the same tracks reuses them
           + residual_j                   learned per talk, zero-initialised, only for talks with
                                          training clicks ("warm"), dropped at random in training

and, on the output side only, one more column holding a learned per-talk bias (warm talks only,
dropped with the residual; 0 for new talks), which lets the model express popularity.

A swapped model can also be served as a **blend**: its scores plus ``text_weight`` times text
similarity to the session (the raw text vectors of its clicks weighted by ``text_decay ** steps back``,
as :class:`gtcrec.baselines.TextSimilarityBaseline`). :meth:`ItemRepresentation.set_text_blend` sets it;
the output table then carries the raw text rows as further columns and the skip block adds the
matching query, so the blend is one matrix product in the same graph. Training never uses it (0).

:class:`LastClickSkip` is the task block of ``NextItemPredictionTask``: it maps the transformer's
hidden state to the item space (``d_model -> dim``) and adds ``gain * item(last click)`` (more
exactly, the clicks so far weighted by ``decay ** steps back``, ``decay`` learned from 0) plus a
constant 1 that meets the bias column. Its projection and decay start at zero, so an untrained model
ranks exactly by text similarity to the last click (scaled by ``gain``), and training departs from there.

Catalog swap (:meth:`ItemRepresentation.set_catalog`): the text rows and field values of the new
talks replace the old ones; residuals and biases become zero (no new talk has clicks); the adapter,
field tables, gain, decay and transformer stay as trained.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from gtcrec.layout import RESERVED

MISSING = ""  # a field value that is absent or empty: no field vector


class ItemRepresentation(torch.nn.Module):
    """Item table for T4R: frozen text + shared adapter + field vectors + per-talk residual/bias.

    ``text``: ``(n_codes, dim)`` float32, reserved rows first (as :func:`gtcrec.etl.item_table`).
    ``fields``: ``{name: values}``, one value per code (text; ``""`` for absent), or ``None``.
    ``warm``: boolean ``(n_codes,)``, the codes that may learn a residual and a bias (talks with
    training clicks); ``None``: no code. ``adapter`` / ``residual`` / ``bias`` switch those parts;
    ``drop``: probability that a warm talk's residual and bias are left out of a training step.
    """

    text_weight = 0.0  # the blend with text similarity (set_text_blend); class defaults, so a model
    text_decay = 0.0   # saved before the blend existed loads without it

    def __init__(self, text: np.ndarray, fields: Mapping[str, Sequence[str]] | None = None,
                 warm: np.ndarray | None = None, adapter: bool = True, residual: bool = True,
                 bias: bool = True, drop: float = 0.3):
        super().__init__()
        text = np.asarray(text, dtype=np.float32)
        if text.ndim != 2:
            raise ValueError(f"text must be 2-D, got {text.shape}")
        if not 0.0 <= drop < 1.0:
            raise ValueError("drop must be in [0, 1)")
        n, dim = text.shape
        self.num_embeddings, self.embedding_dim = int(n), int(dim)
        self.use_adapter, self.use_residual, self.use_bias = bool(adapter), bool(residual), bool(bias)
        self.drop = float(drop)
        self.register_buffer("text", torch.from_numpy(text.copy()))
        self.adapter = torch.nn.Parameter(torch.zeros(dim, dim)) if adapter else None
        # fields: a vocabulary of values per field, learned from this catalog; index 0 = absent
        self.field_names = list(fields or {})
        self.field_vocab: dict[str, list[str]] = {}
        tables = {}
        for name in self.field_names:
            values = sorted({str(v) for v in fields[name]} - {MISSING})
            self.field_vocab[name] = values
            tables[name] = torch.nn.Embedding(len(values) + 1, dim, padding_idx=0)  # 0: no vector, ever
            torch.nn.init.zeros_(tables[name].weight)
        self.fields = torch.nn.ModuleDict(tables)
        self.register_buffer("field_codes", self._field_codes(fields, n))
        self.register_buffer("warm", self._warm(warm, n))
        self.residual = torch.nn.Parameter(torch.zeros(n, dim)) if residual else None
        self.item_bias = torch.nn.Parameter(torch.zeros(n)) if bias else None
        self._clear()

    # ------------------------------------------------------------------ parts
    def _field_codes(self, fields, n: int) -> torch.Tensor:
        codes = np.zeros((n, len(self.field_names)), dtype=np.int64)
        for f, name in enumerate(self.field_names):
            values = [str(v) for v in fields[name]]
            if len(values) != n:
                raise ValueError(f"field {name!r} has {len(values)} values for {n} codes")
            index = {v: i + 1 for i, v in enumerate(self.field_vocab[name])}
            codes[:, f] = [index.get(v, 0) for v in values]  # unknown or absent: 0, a zero vector
        return torch.from_numpy(codes)

    @staticmethod
    def _warm(warm, n: int) -> torch.Tensor:
        if warm is None:
            return torch.zeros(n)
        warm = np.asarray(warm, dtype=bool).reshape(-1)
        if len(warm) != n:
            raise ValueError(f"warm has {len(warm)} entries for {n} codes")
        return torch.from_numpy(warm.astype(np.float32))

    def _keep_mask(self) -> torch.Tensor:
        """Which codes use their residual and bias now: warm ones, each dropped at random in training."""
        if self.training and self.drop > 0:
            if self._keep is None:  # one draw per training step (set by forward, reused by weight)
                self._keep = self.warm * (torch.rand_like(self.warm) >= self.drop).float()
            return self._keep
        return self.warm

    def _compute(self) -> torch.Tensor:
        out = self.text
        if self.adapter is not None:
            out = out + out @ self.adapter
        for f, name in enumerate(self.field_names):
            out = out + self.fields[name](self.field_codes[:, f])
        if self.residual is not None:
            out = out + self.residual * self._keep_mask()[:, None]
        return out

    def table(self) -> torch.Tensor:
        """The item vectors ``(num_embeddings, embedding_dim)``, shared by input and output.

        In training, computed once per step (by :meth:`forward`) and reused by the skip path and
        the output layer of that step, with the same random drop. In eval mode, computed once and
        kept until the next :meth:`train` or :meth:`set_catalog` (a trace holds it as a constant,
        so serving never recomputes the table)."""
        if self._step_table is None:
            if self.training:
                return self._compute()
            with torch.no_grad():
                self._step_table = self._compute()
        return self._step_table

    @property
    def weight(self) -> torch.Tensor:
        """The output table T4R's tied output layer reads: the item vectors, plus the bias column,
        plus the raw text rows when a text blend is set (:meth:`set_text_blend`)."""
        if not self.training:
            if self._eval_weight is None:
                with torch.no_grad():
                    self._eval_weight = self._output_table(self.warm)
            return self._eval_weight
        return self._output_table(self._keep_mask())

    def _output_table(self, keep: torch.Tensor) -> torch.Tensor:
        parts = [self.table()]
        if self.item_bias is not None:
            parts.append((self.item_bias * keep)[:, None])
        if self.text_weight > 0:
            parts.append(self.text)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    @property
    def output_dim(self) -> int:
        return (self.embedding_dim + (1 if self.item_bias is not None else 0)
                + (self.embedding_dim if self.text_weight > 0 else 0))

    def set_text_blend(self, weight: float, decay: float = 0.0) -> None:
        """Add ``weight`` x text similarity to the session to every score (``decay``: the weight of
        each earlier click, per step back; 0 the last click only). ``weight`` 0 switches the blend off."""
        weight, decay = float(weight), float(decay)
        if not weight >= 0.0 or not 0.0 <= decay < 1.0:
            raise ValueError(f"a text blend needs weight >= 0 and decay in [0, 1), got {weight}, {decay}")
        self.text_weight, self.text_decay = weight, decay
        self._clear()

    def forward(self, codes: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of :meth:`table` for ``codes`` (any shape). T4R calls it once per batch, first:
        in training this starts a step (a new random drop, the table computed once)."""
        if offsets is not None:
            raise ValueError("ItemRepresentation takes padded code sequences, not bags")
        if self.training:  # a new step: a new draw, the table computed once for it
            self._keep = None
            self._step_table = self._compute()
        return self.rows(codes)

    def rows(self, codes: torch.Tensor) -> torch.Tensor:
        """Rows of the current table for ``codes``, without starting a new step."""
        return self.table()[codes.long()]

    # ------------------------------------------------------------------ swap
    def set_catalog(self, text: np.ndarray, fields: Mapping[str, Sequence[str]] | None = None) -> None:
        """Point at a new catalog: its text rows and field values; residuals and biases 0 (no clicks).

        Field values the training catalog never had get no field vector. A field of the training
        catalog that the new one lacks counts as absent for every talk.
        """
        text = np.asarray(text, dtype=np.float32)
        if text.ndim != 2 or text.shape[1] != self.embedding_dim:
            raise ValueError(f"new text must be (n, {self.embedding_dim}), got {text.shape}")
        n = text.shape[0]
        device = self.text.device
        fields = dict(fields or {})
        full = {name: fields.get(name, [MISSING] * n) for name in self.field_names}
        self.num_embeddings = int(n)
        self.text = torch.from_numpy(text.copy()).to(device)
        self.field_codes = self._field_codes(full, n).to(device)
        self.warm = torch.zeros(n, device=device)
        if self.residual is not None:
            self.residual = torch.nn.Parameter(torch.zeros(n, self.embedding_dim, device=device))
        if self.item_bias is not None:
            self.item_bias = torch.nn.Parameter(torch.zeros(n, device=device))
        self._clear()

    def _clear(self) -> None:
        """Forget the computed table, weight and draw (a step's, or eval mode's)."""
        self._keep: torch.Tensor | None = None
        self._step_table: torch.Tensor | None = None
        self._eval_weight: torch.Tensor | None = None

    def _apply(self, fn, *args, **kwargs):
        self._clear()  # moved or cast: the kept table would be stale
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True):
        self._clear()  # a step's draw never outlives the step; eval computes the table anew
        return super().train(mode)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_keep"] = state["_step_table"] = state["_eval_weight"] = None  # derived: not saved
        return state

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, adapter={self.use_adapter}, "
                f"fields={self.field_names}, residual={self.use_residual}, bias={self.use_bias}, "
                f"drop={self.drop}")


class LastClickSkip(torch.nn.Module):
    """Task block of ``NextItemPredictionTask(weight_tying=True)``: hidden state -> item space.

    ``out = hidden @ P + gain * sum_k decay**k * item(code k steps before the position)`` (+ a
    constant 1 for the bias column), over the session's talks only (padding and reserved codes add
    nothing). In T4R's causal LM the hidden state at position ``t`` predicts the click after the item
    at ``t``, so the added vector reads only clicks up to ``t``; in inference the last position holds
    the last click. The item codes come from T4R's own record of the batch (``item_seq`` of its
    embedding module, set by :func:`link`). ``P`` starts at zero and ``decay`` (learned, used within
    [0, 0.95]) at 0: untrained, the model ranks by ``gain * item(last) . item(j)``, text similarity to
    the last click; with ``decay`` 0.5 and ``P`` zero it ranks like the recency-weighted text baseline.
    """

    def __init__(self, d_model: int, dim: int, bias: bool = True, gain: float = 5.0):
        super().__init__()
        self.proj = torch.nn.Linear(d_model, dim)
        torch.nn.init.zeros_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)
        self.gain = torch.nn.Parameter(torch.tensor(float(gain)))
        self.decay = torch.nn.Parameter(torch.tensor(0.0))
        self.dim, self.with_bias = int(dim), bool(bias)
        self._source: list = []  # [T4R embedding module], kept out of the module tree

    def link(self, embedding_module) -> None:
        """Read item codes from ``embedding_module.item_seq`` and vectors from its item table."""
        self._source = [embedding_module]

    def __setstate__(self, state):
        super().__setstate__(state)
        if "decay" not in self._parameters:  # saved before the skip had a decay: it added the last click only
            self.decay = torch.nn.Parameter(torch.tensor(0.0))

    def recency_weights(self, length: int) -> torch.Tensor:
        """``(length, length)``: ``decay ** (t - s)`` for ``s <= t``, else 0 (the identity at decay 0).
        The decay is used clamped to [0, 0.95] but its gradient passes the clamp (straight through),
        so a decay pushed below 0 can come back."""
        return recency_matrix(self.decay + (self.decay.clamp(0.0, 0.95) - self.decay).detach(), length)

    def output_size(self):
        return torch.Size([-1, -1, self.dim + (1 if self.with_bias else 0)])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self._source:
            raise RuntimeError("LastClickSkip is not linked to the model's item table")
        embeddings = self._source[0]
        length = hidden.shape[1]
        codes = embeddings.item_seq[:, :length]
        items = embeddings.item_embedding_table.rows(codes) * (codes >= RESERVED).unsqueeze(-1).to(hidden.dtype)
        out = self.proj(hidden) + self.gain * torch.einsum("ts,bsd->btd", self.recency_weights(length), items)
        if self.with_bias:
            out = torch.cat([out, torch.ones_like(out[..., :1])], dim=-1)
        rep = embeddings.item_embedding_table
        if rep.text_weight > 0:  # the blend: the query that meets the raw text columns of the output table
            text = rep.text[codes.long()] * (codes >= RESERVED).unsqueeze(-1).to(hidden.dtype)
            weights = recency_matrix(torch.full((), float(rep.text_decay), device=hidden.device), length)
            out = torch.cat([out, rep.text_weight * torch.einsum("ts,bsd->btd", weights, text)], dim=-1)
        return out


def recency_matrix(decay: torch.Tensor, length: int) -> torch.Tensor:
    """``(length, length)``: ``decay ** (t - s)`` for ``s <= t``, else 0 (the identity at decay 0).
    Powers by a cumulative product, whose gradient is defined at 0."""
    powers = torch.cumprod(torch.cat([torch.ones_like(decay).reshape(1), decay.expand(length - 1)]), 0)
    steps = torch.arange(length, device=decay.device)
    back = steps[:, None] - steps[None, :]
    return torch.where(back >= 0, powers[back.clamp(min=0)], torch.zeros_like(decay))


# ---------------------------------------------------------------------- catalog fields

FIELDS = ("track", "level", "format", "organization", "day")  # catalog columns used when present

# Notebook 04's REPRESENTATION parameter (its default; tests/notebooks/test_02_03_train.py checks they agree),
# for code that builds the same model without the notebook (benchmarks, tests). ``drop`` 0.3: against 0.7,
# better warm recall on the generator and on MovieLens and better zero-shot recall on MovieLens; the
# generator's zero-shot moved within one SE (measurements in docs/results.md).
DEFAULT_SETTINGS = {"adapter": True, "fields": list(FIELDS), "residual": True, "bias": True, "drop": 0.3,
                    "skip": True, "gain": 5.0}


def _field_text(value) -> str:
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
        return MISSING
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)  # a day read as 2.0 is day 2
    return str(value).strip()


def catalog_fields(catalog, names: Sequence[str] = FIELDS, reserved: int = 3) -> dict[str, list[str]]:
    """``{field: value per code}`` for an :class:`ItemRepresentation`: the catalog's columns among
    ``names`` (absent columns are left out), in catalog order after ``reserved`` empty rows."""
    return {name: [MISSING] * reserved + [_field_text(v) for v in catalog[name].tolist()]
            for name in names if name in catalog.columns}


def warm_codes(train_sessions: Sequence[np.ndarray], n_codes: int, reserved: int = 3) -> np.ndarray:
    """Boolean ``(n_codes,)``: the codes clicked in ``train_sessions`` (reserved codes never), the
    talks that may learn a residual and a bias."""
    warm = np.bincount(np.concatenate([np.asarray(s, dtype=np.int64) for s in train_sessions]),
                       minlength=n_codes) > 0
    warm[:reserved] = False
    return warm


def settings_for(settings: Mapping | None, catalog, warm: np.ndarray | None = None) -> dict | None:
    """``build_model(item_repr=...)`` for ``catalog``: ``settings`` (switches and field names, as
    as :func:`gtcrec.model.describe` reads them from a model) with that catalog's field values and
    ``warm`` codes. ``None`` stays ``None`` (T4R's plain table)."""
    if settings is None:
        return None
    out = dict(settings)
    out["fields"] = catalog_fields(catalog, out.get("fields", FIELDS))
    out["warm"] = warm
    return out
