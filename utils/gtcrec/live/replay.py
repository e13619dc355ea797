"""``gtcrec-replay``: send a click file's sessions to a running server as the event's app would.

For teams testing a deployment before the doors open (docs/your-event.md): the sessions of a clicks file
(the documented clicks format, CSV or parquet, checked against its catalog) are taken in start order, ``--skip`` of them left out and the
next ``--sessions`` sent; a request carries ``--sessions-per-request`` sessions, each with its clicks so far,
click after click (as the app asks after every click), with the logging key (``--log-key-file``), so a
server started with ``--click-log`` logs them and ``gtcrec-adapt`` learns from them. Without a key the
requests are answered and never logged. It prints how often the next click was among the answer's talks
(hit@k, the prequential measure of notebook 10), from what the server answered.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import pandas as pd

from gtcrec.serving import client as cl


def sessions_in_order(clicks: pd.DataFrame) -> list:
    """Session ids by their first click's time (ties by id as text)."""
    starts = clicks.groupby("session_id", sort=False)["timestamp"].min().reset_index()
    starts["key"] = starts["session_id"].astype(str)
    return starts.sort_values(["timestamp", "key"], kind="stable")["session_id"].tolist()


def replay(grpc_client, clicks: pd.DataFrame, sessions_per_request: int = 20, parameters: dict | None = None,
           model_name: str = cl.DEFAULT_MODEL_NAME) -> dict:
    """Send ``clicks``' sessions, ``sessions_per_request`` at a time, each prefix of each session once; returns
    the requests, sessions and clicks sent, the next clicks scored and how many of them the answer held."""
    keys = sessions_in_order(clicks)
    requests = hits = scored = 0
    for start in range(0, len(keys), sessions_per_request):
        block = clicks[clicks["session_id"].isin(set(keys[start:start + sessions_per_request]))]
        block = block.assign(step=block.groupby("session_id").cumcount())  # load_clicks put them in click order
        for step in range(int(block["step"].max()) + 1):
            asked = block[(block["step"] <= step) & block["session_id"].isin(block.loc[block["step"] == step,
                                                                                           "session_id"])]
            answer = cl.infer_arrays(grpc_client, cl.request_arrays(asked), model_name, parameters=parameters)
            requests += 1
            top = dict(zip(answer["session_ids"].astype(str), answer["talk_ids"].astype(str).tolist()))
            nexts = block[block["step"] == step + 1]
            scored += len(nexts)
            hits += sum(str(t) in top.get(str(s), ()) for s, t in zip(nexts["session_id"], nexts["talk_id"]))
    return {"requests": requests, "sessions": len(keys), "clicks": len(clicks), "scored": scored, "hits": hits}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gtcrec-replay", description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog="Exit status: 0 done; 2 bad arguments or an unreadable file; 1 a request failed.")
    parser.add_argument("clicks", help="a clicks file (session_id, talk_id, timestamp; CSV or parquet)")
    parser.add_argument("--catalog", required=True, help="the catalog the clicks are on (their talk ids are checked "
                        "against it, as make run checks them)")
    parser.add_argument("--url", required=True, help="the server's gRPC address, host:port")
    parser.add_argument("--log-key-file", help="the logging key the server was given (gtcrec-serve --log-key-file): "
                        "the requests are logged; without it they are answered, not logged")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first this many sessions (default: 0)")
    parser.add_argument("--sessions", type=int, help="send this many sessions (default: all after --skip)")
    parser.add_argument("--sessions-per-request", type=int, default=20, help="default: %(default)s")
    parser.add_argument("--model-name", default=cl.DEFAULT_MODEL_NAME, help="default: %(default)s")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import tritonclient.grpc as grpcclient

    from gtcrec.data import load_clicks
    from gtcrec.serving import access

    parser = _parser()
    args = parser.parse_args(argv)
    if args.skip < 0 or (args.sessions is not None and args.sessions < 1) or args.sessions_per_request < 1:
        parser.error("--skip must be >= 0, --sessions and --sessions-per-request >= 1")
    try:
        clicks, _ = load_clicks(args.clicks, args.catalog)
        key = access.read_log_key(args.log_key_file)[0] if args.log_key_file else None
    except (ValueError, OSError, access.LogKeyError) as exc:
        print(f"gtcrec-replay: {exc}", file=sys.stderr)
        return 2
    keys = sessions_in_order(clicks)
    chosen = keys[args.skip:] if args.sessions is None else keys[args.skip:args.skip + args.sessions]
    clicks = clicks[clicks["session_id"].isin(set(chosen))]
    client = grpcclient.InferenceServerClient(args.url)
    started = time.perf_counter()
    try:
        done = replay(client, clicks, args.sessions_per_request, cl.log_parameters(key), args.model_name)
    except Exception as exc:  # noqa: BLE001 - tritonclient raises its own errors; the message says what failed
        print(f"gtcrec-replay: a request failed: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    seconds = time.perf_counter() - started
    rate = done["hits"] / done["scored"] if done["scored"] else float("nan")
    print(f"[gtcrec-replay] sessions {args.skip + 1}-{args.skip + done['sessions']} of {len(keys)}: "
          f"{done['clicks']} clicks in {done['requests']} requests ({seconds:.1f} s), "
          f"{'logged (the logging key sent)' if key else 'not logged (no logging key)'}; "
          f"the next click was in the answer {done['hits']} of {done['scored']} times ({rate:.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
