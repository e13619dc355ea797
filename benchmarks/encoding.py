"""Text-encoding benchmark: faster ways to embed a catalog, against the float32 vectors, in ONE run
(not a test; nothing is asserted, nothing is adopted).

    python benchmarks/encoding.py --artifacts-dir artifacts [--timing-texts 128] [--rounds 2]
                                  [--no-recall] [--onnx] [--json out.json]

The reference: all-MiniLM-L6-v2 in fp32 PyTorch, texts truncated at 256 tokens, mean pooling over the
mask, L2 normalisation, batches of 64 talks of similar length (the encoder of earlier releases). The variants:

* ``torch-fp32-256``: the reference.
* ``torch-fp32-256-b32``: the reference in batches of 32 talks instead of 64 (less padding per batch).
* ``torch-bf16-256-b32``: that under bfloat16 autocast, what ``TextEncoder`` runs by default where the
  CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere it is emulated and slow.
* ``torch-fp32-128``: the same, truncated at 128 tokens (the length the model was trained with).
* ``torch-int8-256`` / ``torch-int8-128``: ``torch.ao.quantization.quantize_dynamic`` on every
  ``nn.Linear`` (int8 weights, activations quantised per batch); needs nothing new.
* with ``--onnx``: ``ort-fp32-256`` / ``ort-int8-256`` / ``ort-int8-128``: the model exported to ONNX
  and run by ONNX Runtime (int8: ``onnxruntime.quantization.quantize_dynamic``). ONNX Runtime and
  onnx are NOT in ``requirements.lock``: this option installs ``onnxruntime`` and ``onnx`` (versions
  that accept the lock's numpy 1.24.4 and protobuf 3.20.3) with pip into ``data/cache/bench-onnx``,
  outside the virtual environment, and imports them from there.

Measured, all in this run:

1. talks/s of each variant on the same texts (the catalog's talks, title + abstract as embedded by
   notebook 00), in interleaved rounds; the ratio to the reference is taken within each round.
   One torch thread per core, as notebook 00 runs.
2. cosine to the reference's vectors, per talk: min and mean, over the whole spring catalog.
3. downstream (unless ``--no-recall``): recall@10 / NDCG@10 of the text-similarity baselines
   (last click, session mean: ``gtcrec.baselines``) on notebook 01's test split, with each variant's
   item table. These baselines read only the vectors, so they show what a variant changes for
   ranking by text; the trained model of notebook 04 and the swap of notebook 07 are NOT re-run
   here, so a variant is not adopted on these numbers alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from gtcrec import embeddings as emb
from gtcrec.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]
ONNX_DIR = REPO / "data" / "cache" / "bench-onnx"
ONNX_PACKAGES = ("onnxruntime==1.20.1", "onnx==1.17.0")


class Variant:
    """An encoder: ``encode(texts) -> (n, 384)`` L2-normalised float32, batches sorted by length as
    ``TextEncoder.encode`` does."""

    def __init__(self, name: str, tokenizer, forward, max_length: int, batch_size: int = 64):
        self.name, self.tokenizer, self.forward = name, tokenizer, forward
        self.max_length, self.batch_size = max_length, batch_size

    def encode(self, texts) -> np.ndarray:
        out = np.zeros((len(texts), emb.DIM), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            idx = order[start:start + self.batch_size]
            tokens = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="np")
            states = self.forward(tokens)  # (b, t, 384)
            mask = tokens["attention_mask"][..., None].astype(np.float32)
            pooled = (states * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            out[idx] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return out


def torch_variants(tokenizer, lengths=(256, 128)) -> list[Variant]:
    import torch
    from transformers import AutoModel

    fp32 = AutoModel.from_pretrained(emb.model_dir(), local_files_only=True).eval()
    int8 = torch.ao.quantization.quantize_dynamic(
        AutoModel.from_pretrained(emb.model_dir(), local_files_only=True).eval(), {torch.nn.Linear}, dtype=torch.qint8)

    def runner(model, bf16=False):
        def forward(tokens):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                inputs = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in tokens.items()}
                return model(**inputs).last_hidden_state.float().numpy()
        return forward

    out = []
    for kind, model in (("fp32", fp32), ("int8", int8)):
        for n in lengths:
            out.append(Variant(f"torch-{kind}-{n}", tokenizer, runner(model), n))
    out[1:1] = [Variant("torch-fp32-256-b32", tokenizer, runner(fp32), 256, batch_size=32),
                Variant("torch-bf16-256-b32", tokenizer, runner(fp32, bf16=True), 256, batch_size=32)]
    return out


def install_onnx() -> None:
    """onnxruntime and onnx into ONNX_DIR (outside the venv), then on sys.path."""
    if not (ONNX_DIR / "onnxruntime").is_dir() or not (ONNX_DIR / "onnx").is_dir():
        print(f"installing {' '.join(ONNX_PACKAGES)} into {ONNX_DIR} (not into the virtual environment)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(ONNX_DIR),
                        *ONNX_PACKAGES], check=True)
    sys.path.insert(0, str(ONNX_DIR))


def onnx_variants(tokenizer, folder: Path) -> list[Variant]:
    import torch
    from transformers import AutoModel

    install_onnx()
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = folder / "minilm-fp32.onnx", folder / "minilm-int8.onnx"
    if not fp32_path.is_file():
        model = AutoModel.from_pretrained(emb.model_dir(), local_files_only=True).eval()
        example = tokenizer(["an example talk"], return_tensors="pt")
        names = ["input_ids", "attention_mask", "token_type_ids"]
        torch.onnx.export(model, tuple(example[n] for n in names), str(fp32_path), input_names=names,
                          output_names=["last_hidden_state"], opset_version=14, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "tokens"} for n in names + ["last_hidden_state"]})
    if not int8_path.is_file():
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1

    def runner(path):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        wanted = [i.name for i in session.get_inputs()]

        def forward(tokens):
            return session.run(None, {n: np.asarray(tokens[n], dtype=np.int64) for n in wanted})[0]
        return forward

    fp32, int8 = runner(fp32_path), runner(int8_path)
    return [Variant("ort-fp32-256", tokenizer, fp32, 256), Variant("ort-int8-256", tokenizer, int8, 256),
            Variant("ort-int8-128", tokenizer, int8, 128)]


def text_recall(table: np.ndarray, test_dir) -> dict:
    """recall@10 / NDCG@10 of the text-similarity baselines (last click, session mean) on the test split."""
    from gtcrec.baselines import TextSimilarityBaseline
    from gtcrec.metrics import evaluate_scores, read_sessions, sessions_to_prefixes

    sessions = [s for s in read_sessions(test_dir) if len(s) >= 2]
    prefixes, targets = sessions_to_prefixes(sessions)
    out = {}
    for mode in ("last", "mean"):
        scores = TextSimilarityBaseline(table, mode).fit().scores(prefixes)
        m = evaluate_scores(scores, targets, ks=(10,), exclude=prefixes)
        out[mode] = {"recall@10": float(m["recall@10"]), "ndcg@10": float(m["ndcg@10"])}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-dir", default="artifacts")
    parser.add_argument("--timing-texts", type=int, default=128, help="talks encoded per variant per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-recall", action="store_true")
    parser.add_argument("--onnx", action="store_true", help="add ONNX Runtime variants (installs it outside the venv)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    data = read_manifest(args.artifacts_dir, "00-data")
    catalog = pd.read_parquet(data.path("spring_catalog"))
    texts = emb.talk_text(catalog)
    tokenizer = AutoTokenizer.from_pretrained(emb.model_dir(), local_files_only=True)
    lengths = [len(t) for t in tokenizer(texts)["input_ids"]]
    print(f"{len(texts)} talks; tokens per talk: median {int(np.median(lengths))}, max {max(lengths)}, "
          f"{np.mean(np.array(lengths) > 128):.0%} longer than 128, {np.mean(np.array(lengths) > 256):.0%} "
          f"longer than 256; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)

    variants = torch_variants(tokenizer)
    if args.onnx:
        variants += onnx_variants(tokenizer, REPO / "data" / "cache" / "bench-onnx-models")
    report: dict = {"talks": len(texts), "machine": {"cpus": os.cpu_count(), "load_avg_1min_at_start": os.getloadavg()[0]}}

    # -- speed: interleaved rounds on the same texts -----------------------------------------------
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.choice(len(texts), size=min(args.timing_texts, len(texts)), replace=False)]
    for v in variants:
        v.encode(sample[:8])  # warm-up
    rows = []
    for _ in range(args.rounds):
        row = {}
        for v in variants:
            started = time.perf_counter()
            v.encode(sample)
            row[v.name] = len(sample) / (time.perf_counter() - started)
        rows.append(row)
    speed = pd.DataFrame(rows)
    ratio = speed.div(speed["torch-fp32-256"], axis=0)

    # -- cosine to the reference's vectors, and downstream recall ------------------------------------
    reference = variants[0].encode(texts)
    table_base = np.load(read_manifest(args.artifacts_dir, "01-etl").path("item_table"))
    reserved = len(table_base) - len(texts)
    results = {}
    for v in variants:
        vectors = v.encode(texts)
        cos = (vectors * reference).sum(1)
        results[v.name] = {"talks_per_s": float(speed[v.name].median()), "x_fp32": float(ratio[v.name].median()),
                           "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}
        if not args.no_recall:
            table = table_base.copy()
            table[reserved:] = vectors
            results[v.name]["text_recall"] = text_recall(table, read_manifest(args.artifacts_dir, "01-etl").path("test"))
        print(f"  {v.name:15s} {results[v.name]['talks_per_s']:7.1f} talks/s ({results[v.name]['x_fp32']:.2f}x fp32)  "
              f"cosine to fp32 min {results[v.name]['cosine_min']:.4f} mean {results[v.name]['cosine_mean']:.4f}"
              + ("" if args.no_recall else "  text R@10 last {last[recall@10]:.3f} mean {mean[recall@10]:.3f}".format(
                  **results[v.name]["text_recall"])), flush=True)
    report["variants"] = results
    report["speed_rounds_talks_per_s"] = speed.to_dict(orient="list")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
