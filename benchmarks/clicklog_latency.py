"""Click log cost: served p50 latency of one-session requests with the click log on vs off (not a test).

    python benchmarks/clicklog_latency.py [--requests 2000] [--instances 1] [--json out.json]

Builds a tiny world in a temporary folder (an 80-talk vocabulary, a traced embedding-sum top-k model,
the lean executor), starts TWO real Triton servers on the same repository, one with
``click_log=`` and one without, and sends the same one-session requests (the growing prefixes of
generated sessions, as a live site sends them, with the app's logging key and a client id, so the
logging server logs them) to both in ONE run, alternating server and order every round, one gRPC
client each. Prints the p50 / p90 / p99 of each and the ratio of the p50s,
and what the log holds at the end (read back with ``gtcrec.live.read_click_log``).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gtcrec.live import read_click_log
from gtcrec.serving import client as cl
from gtcrec.serving.export import example_clicks, export_ensemble
from gtcrec.serving.server import TritonServer

VOCAB = [f"T{i:04d}" for i in range(80)]


class Scorer(torch.nn.Module):
    def __init__(self, n_codes: int, k: int):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(n_codes, 16, generator=torch.Generator().manual_seed(1)))
        self.k = k

    def forward(self, inputs):
        values, offsets = inputs["item_id-list__values"], inputs["item_id-list__offsets"]
        lengths = offsets[1:] - offsets[:-1]
        seg = torch.repeat_interleave(torch.arange(lengths.shape[0]), lengths)
        summed = torch.zeros(lengths.shape[0], 16).index_add_(0, seg, self.table[values])
        top = torch.topk(summed @ self.table.t(), self.k, dim=1)
        return top.values, top.indices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per server")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="gtcrec-clicklog-bench-"))
    model = root / "m.pt"
    example = {"item_id-list__values": torch.tensor([3, 4, 5]), "item_id-list__offsets": torch.tensor([0, 1, 3])}
    with torch.no_grad():
        torch.jit.trace(Scorer(len(VOCAB) + 3, 20).eval(), (example,), strict=False).save(str(model))
    clicks = example_clicks(VOCAB, n_sessions=200, max_clicks=12, seed=3)
    export_ensemble(VOCAB, model, root / "repo", max_len=10, k=10, name="rec", request=clicks.head(40),
                    instance_count=args.instances)
    requests = []
    for _, session in clicks.sort_values(["session_id", "timestamp"]).groupby("session_id"):
        requests += [cl.request_arrays(session.iloc[:n]) for n in range(1, len(session) + 1)]
    inputs = [cl.make_inputs(r, "grpc") for r in requests]
    outputs = cl.make_outputs("grpc")
    log_dir = root / "log"
    servers = {"on": TritonServer(root / "repo", load_models=["rec"], click_log=log_dir, startup_timeout=180),
               "off": TritonServer(root / "repo", load_models=["rec"], startup_timeout=180)}
    times = {"on": [], "off": []}
    try:
        for server in servers.values():
            server.start()
        clients = {name: s.grpc_client() for name, s in servers.items()}
        # what the app sends: its logging key and an attendee id, to both (the one without a log ignores them)
        parameters = cl.log_parameters(servers["on"].log_key, "attendee-1")
        sent = {"on": 0, "off": 0}
        for i in range(args.warmup + args.requests):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            for name in order:
                started = time.perf_counter()
                clients[name].infer("rec", inputs[i % len(inputs)], outputs=outputs, parameters=parameters)
                if i >= args.warmup:
                    times[name].append((time.perf_counter() - started) * 1e3)
                sent[name] += len(requests[i % len(requests)]["talk_id"])
        for c in clients.values():
            c.close()
    finally:
        for server in servers.values():
            server.stop()
    result = {}
    for name, values in times.items():
        arr = np.asarray(values)
        result[f"p50_ms_{name}"], result[f"p90_ms_{name}"], result[f"p99_ms_{name}"] = (
            float(np.percentile(arr, q)) for q in (50, 90, 99))
    result["p50_ratio_on_over_off"] = result["p50_ms_on"] / result["p50_ms_off"]
    result["requests_per_server"] = args.requests
    frame, report = read_click_log(log_dir)
    result["log_rows"] = report["rows_read"]
    result["clicks_sent_to_on"] = sent["on"]
    result["log_clicks_dropped"] = report["writers_dropped_clicks"]
    result["log_unique_clicks"] = report["clicks"]
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
