"""Requests while a swap happens: a probe request, background traffic, its summary around the switch and
a timeline plot."""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from gtcrec.serving.repository import DEFAULT_MODEL_NAME, grpc_target


# ----------------------------------------------------------------------------------------------
# Requests while the swap happens
# ----------------------------------------------------------------------------------------------

def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except OSError:
            return False


def probe_request(old_vocab: Sequence[str], new_vocab: Sequence[str], n_clicks: int = 3,
                  start_ms: int = 1_700_000_000_000) -> dict[str, np.ndarray]:
    """A request of two sessions, one clicking old-catalog talks and one new-catalog talks. The old
    version answers both with old talks (the second by its fallback), the new version both with new
    talks, so every answer tells which catalog served it."""
    from gtcrec.serving import client as cl

    rows = [("probe-old", str(t), start_ms + 60_000 * i) for i, t in enumerate(list(old_vocab)[:n_clicks])]
    rows += [("probe-new", str(t), start_ms + 60_000 * i) for i, t in enumerate(list(new_vocab)[:n_clicks])]
    clicks = pd.DataFrame(rows, columns=["session_id", "talk_id", "timestamp"])
    clicks["timestamp"] = clicks["timestamp"].astype(np.int64)
    return cl.request_arrays(clicks)


def answer_catalog(talk_ids: np.ndarray, old_ids: set, new_ids: set) -> str:
    """"old" / "new" when every answered talk is in that catalog, "mixed" otherwise ("empty": none)."""
    ids = {t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in np.asarray(talk_ids).ravel()}
    ids.discard("")
    if not ids:
        return "empty"
    if ids <= old_ids:
        return "old"
    if ids <= new_ids:
        return "new"
    return "mixed"


class Traffic:
    """Requests sent one after another from a background thread while a swap happens.

    Bounded: stops after ``max_requests`` requests or ``max_seconds``, or at :meth:`stop`. Loopback
    servers only (``ValueError`` otherwise). Each answer is classified by :func:`answer_catalog`.
    Times are seconds since :meth:`start` (``time.perf_counter`` based; :meth:`at` converts)."""

    def __init__(self, url, request: dict[str, np.ndarray], old_vocab: Iterable[str], new_vocab: Iterable[str],
                 model_name: str = DEFAULT_MODEL_NAME, max_requests: int = 5000, max_seconds: float = 120.0,
                 pause: float = 0.0, timeout: float = 30.0, batched: bool = False):
        self.url = grpc_target(url)
        host = self.url.rsplit(":", 1)[0]
        if not _is_loopback(host):
            raise ValueError(f"Traffic sends requests to loopback servers only, not {host!r}")
        self.request, self.model_name = request, model_name
        self.old_ids, self.new_ids = set(map(str, old_vocab)), set(map(str, new_vocab))
        self.max_requests, self.max_seconds = int(max_requests), float(max_seconds)
        self.pause, self.timeout, self.batched = float(pause), float(timeout), batched
        self.rows: list[dict] = []
        self.t0: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def at(self, perf_counter_time: float) -> float:
        """A ``time.perf_counter()`` value in this traffic's clock (seconds since start)."""
        return perf_counter_time - self.t0

    def start(self) -> "Traffic":
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="gtcrec-swap-traffic", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import tritonclient.grpc as grpcclient

        from gtcrec.serving import client as cl

        client = grpcclient.InferenceServerClient(self.url)
        inputs = cl.make_inputs(self.request, "grpc", batched=self.batched)
        outputs = cl.make_outputs("grpc")
        try:
            for seq in range(self.max_requests):
                if self._stop.is_set() or time.perf_counter() - self.t0 > self.max_seconds:
                    break
                sent = time.perf_counter()
                row = {"seq": seq, "sent": sent - self.t0}
                try:
                    result = client.infer(self.model_name, inputs, outputs=outputs, client_timeout=self.timeout)
                    talks = result.as_numpy("talk_ids")
                    row.update(ok=True, catalog=answer_catalog(talks, self.old_ids, self.new_ids), error="")
                except Exception as exc:  # every failure counts; the loop goes on
                    row.update(ok=False, catalog="error", error=f"{type(exc).__name__}: {exc}"[:300])
                received = time.perf_counter()
                row.update(received=received - self.t0, latency_ms=(received - sent) * 1e3)
                self.rows.append(row)
                if self.pause:
                    self._stop.wait(self.pause)
        finally:
            client.close()

    def wait_for(self, n_requests: int, timeout: float = 30.0) -> None:
        """Block until ``n_requests`` answers have arrived (or ``timeout``)."""
        deadline = time.perf_counter() + timeout
        while len(self.rows) < n_requests and time.perf_counter() < deadline and self.running():
            time.sleep(0.01)

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> pd.DataFrame:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
        return self.frame()

    def frame(self) -> pd.DataFrame:
        cols = ["seq", "sent", "received", "latency_ms", "ok", "catalog", "error"]
        return pd.DataFrame(list(self.rows), columns=cols)

    def __enter__(self) -> "Traffic":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def traffic_summary(frame: pd.DataFrame, switch_start: float, switch_end: float,
                    before: str = "old", after: str = "new") -> dict:
    """What the client saw around a switch (times in the traffic's clock, e.g. ``Traffic.at(...)``).

    ``before_only``: every answer received before the load request came from the ``before`` catalog;
    ``after_only``: every request sent after the load returned was answered from ``after``;
    ``ordered``: no ``before`` answer arrived after the first ``after`` answer (one switch, no
    flapping). ``gap_ms``: from the last ``before`` answer to the first ``after`` answer.
    ``first_ms_after``: latencies of the first five answers from ``after`` (a cold new version
    answers its first requests slowly; see the warm-up in ``gtcrec.serving.executor_model``)."""
    ok = frame[frame["ok"]]
    pre = frame[frame["received"] <= switch_start]
    post = frame[frame["sent"] >= switch_end]
    first_after = ok.loc[ok["catalog"] == after, "received"].min() if (ok["catalog"] == after).any() else None
    last_before = ok.loc[ok["catalog"] == before, "received"].max() if (ok["catalog"] == before).any() else None
    ordered = bool(first_after is None or not (ok.loc[ok["received"] > first_after, "catalog"] == before).any())
    during = frame[(frame["sent"] < switch_end) & (frame["received"] > switch_start)]

    def p(df, q):
        return float(np.percentile(df["latency_ms"], q)) if len(df) else None

    return {
        "requests": int(len(frame)), "failed": int((~frame["ok"]).sum()),
        "answers": {str(k): int(v) for k, v in frame["catalog"].value_counts().items()},
        "requests_before": int(len(pre)), "requests_during": int(len(during)), "requests_after": int(len(post)),
        "before_only": bool(len(pre) > 0 and (pre["catalog"] == before).all()),
        "after_only": bool(len(post) > 0 and (post["catalog"] == after).all()),
        "ordered": ordered,
        "switch_seconds": float(switch_end - switch_start),
        "last_before_at": None if last_before is None else float(last_before),
        "first_after_at": None if first_after is None else float(first_after),
        "gap_ms": None if (first_after is None or last_before is None) else float((first_after - last_before) * 1e3),
        "p50_ms_before": p(pre, 50), "p50_ms_during": p(during, 50), "p95_ms_during": p(during, 95),
        "max_ms_during": float(during["latency_ms"].max()) if len(during) else None,
        "p50_ms_after": p(post, 50),
        "first_ms_after": [float(x) for x in ok[ok["catalog"] == after].sort_values("received")["latency_ms"].head(5)],
    }


def plot_timeline(frame: pd.DataFrame, windows: Sequence[tuple[str, float, float]] = (), ax=None,
                  colors: dict | None = None, title: str = "requests during the swap"):
    """Latency of every request against the time it was answered, coloured by the catalog that
    answered; ``windows`` shades ``(label, start, end)`` spans (e.g. the load call)."""
    import matplotlib.pyplot as plt

    colors = colors or {"old": "#5a5a5a", "new": "#76b900", "mixed": "#e0a000", "empty": "#8888ff",
                        "error": "#d62728"}
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 4))
    shades = ["#ffd8a8", "#c9e7ff", "#e8d5ff", "#d5ffd8"]
    for i, (label, start, end) in enumerate(windows):
        ax.axvspan(start, end, color=shades[i % len(shades)], alpha=0.6, label=f"{label} ({end - start:.1f} s)")
    for catalog, part in frame.groupby("catalog"):
        ax.scatter(part["received"], part["latency_ms"], s=6, color=colors.get(catalog, "black"),
                   label=f"answered from {catalog} catalog ({len(part)})" if catalog != "error"
                   else f"failed ({len(part)})")
    ax.set(xlabel="seconds since the client started", ylabel="latency (ms)", title=title, yscale="log")
    ax.legend(loc="upper left", fontsize=8, markerscale=2)
    return ax
