"""Retrieval benchmark: the session encoder plus a Faiss index against the model's full product, measured
in ONE run (nothing is asserted; ratios and recalls are within this run).

    python benchmarks/retrieval.py --artifacts-dir artifacts [--items 1000000] [--queries 1000]

Needs ``make run`` (or ``make run SIZE=small``) first: notebook 04's model and notebook 01's test split.

1. **The run's catalog** (5,000 talks at the default size): for every test session, the model's top 10
   (``score_sessions``, clicked talks left out) against the top 10 from a flat inner-product index and
   from HNSW, over ``item_vectors`` with the query from ``session_encoder``. Prints the share of sessions
   whose top 10 is the same set.
2. **A synthetic catalog of ``--items`` items** (1,000,000 by default): item vectors drawn near the real
   ones (a random real row plus Gaussian noise of half the real per-dimension spread; encoding a million
   texts is not the point), queries from real test sessions. Prints the HNSW build time, resident memory,
   and for a few ``efSearch`` values recall@10 against exact search and the p50 of one query, next to the
   exact path (flat index, one query) and the session encoder's own p50.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _rss_gib() -> float:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts-dir", default="artifacts")
    parser.add_argument("--items", type=int, default=1_000_000, help="items of the synthetic catalog (0: skip it)")
    parser.add_argument("--queries", type=int, default=1000, help="test sessions used as queries in part 2")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--threads", type=int, default=2, help="Faiss threads for building and batch search")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import faiss
    import torch

    from gtcrec import metrics, model as gm
    from gtcrec.manifest import read_manifest
    from gtcrec.serving import retrieval as R

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    train_out, etl_out = read_manifest(args.artifacts_dir, "04-item-representation"), read_manifest(args.artifacts_dir, "01-etl")
    model = gm.load_model(train_out.path("model")).eval()
    max_len = int(model.max_sequence_length)
    prefixes, _ = metrics.sessions_to_prefixes(metrics.read_sessions(etl_out.path("test")))
    encoder = R.session_encoder(model)
    items = R.item_vectors(model)
    queries = R.encode(encoder, prefixes, max_len)

    # 1 -- the run's catalog: the index's top 10 against the model's
    scores = gm.score_sessions(model, prefixes)
    for i, p in enumerate(prefixes):
        scores[i, p] = -np.inf
    exact = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    print(f"1. the run's catalog: {len(items):,} items of dimension {items.shape[1]}, {len(prefixes):,} test sessions")
    for kind, params in (("flat", {}), ("hnsw", {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction,
                                                 "ef_search": 64})):
        index = R.build_index(items, kind, **params)
        _, codes = R.search(index, queries, 10, exclude=prefixes)
        same = np.mean([set(c.tolist()) == set(e.tolist()) for c, e in zip(codes, exact)])
        print(f"   {kind:5s} {R.describe_index(index)}: top 10 the same set as the model's for {100 * same:.2f} % "
              f"of sessions, recall@10 against it {R.overlap(codes, exact):.4f}")

    if args.items <= 0:
        return
    # 2 -- a synthetic catalog near the real one
    rss0 = _rss_gib()
    big = R.near_catalog(items, args.items, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    q = queries[rng.choice(len(queries), size=min(args.queries, len(queries)), replace=False)]
    print(f"\n2. synthetic catalog: {args.items:,} items ({big.nbytes / 2**30:.2f} GiB of vectors), {len(q):,} queries")

    flat = R.build_index(big, "flat")
    start = time.perf_counter()
    _, truth = flat.search(q, 10)
    exact_batch_s = time.perf_counter() - start
    flat_p50 = R.one_query_p50_ms(flat, q, repeats=20)
    flat = None  # frees the exact index before HNSW is built

    rss1 = _rss_gib()
    start = time.perf_counter()
    hnsw = R.build_index(big, "hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    build_s = time.perf_counter() - start
    rss2 = _rss_gib()
    sample = [prefixes[i] for i in rng.choice(len(prefixes), size=200)]
    encoder_p50 = R.encode_p50_ms(encoder, sample, max_len)
    print(f"   exact (flat) search: {1000 * exact_batch_s / len(q):.1f} ms per query in a batch of {len(q)} "
          f"on {args.threads} threads; one query alone p50 {flat_p50:.1f} ms (1 thread)")
    print(f"   HNSW M={args.hnsw_m}, efConstruction={args.ef_construction}: built in {build_s:.0f} s; resident memory "
          f"{rss0:.2f} GiB before the catalog, {rss1:.2f} GiB with its vectors, {rss2:.2f} GiB with the index")
    print(f"   the session encoder alone: p50 {encoder_p50:.2f} ms per session")
    print(f"   {'efSearch':>8s} {'recall@10':>9s} {'p50 ms (1 query, 1 thread)':>27s}")
    for ef in args.ef_search:
        hnsw.hnsw.efSearch = ef
        _, got = hnsw.search(q, 10)
        print(f"   {ef:8d} {R.overlap(got, truth):9.4f} {R.one_query_p50_ms(hnsw, q):27.3f}")


if __name__ == "__main__":
    main()
