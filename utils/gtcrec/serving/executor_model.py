"""The Triton python-backend model that runs the exported Merlin ensemble (copied as ``model.py``).

It replaces Merlin Systems' stock ``executor_model`` file and loads the same thing: the pickled
``Ensemble`` and the artifacts of its operators, from ``<version>/ensemble``. It then answers in
one of two ways, set by the ``executor`` parameter of ``config.pbtxt``:

* ``lean`` (default): when the graph is a chain of operators that all offer
  ``transform_arrays(dict) -> dict`` (the gtcrec operators do), each request's input tensors go
  through that chain as plain numpy arrays and the answer goes straight back. This skips the
  per-call column selection, schema and format work of Merlin's ``LocalExecutor`` (about 0.7 ms
  per request on 2 CPU cores, more than the rest of the graph without the model). Any other
  graph (e.g. one with ``PredictPyTorch``, which calls a second Triton model) falls back to:
* ``merlin``: ``Ensemble.transform(..., runtime=TritonExecutorRuntime())``, as the stock file does.

Dynamic batching (``max_batch_size > 0`` in ``config.pbtxt``, lean executor only): Triton hands
``execute`` several queued requests at once. Each is sessionized on its own; their model inputs
are concatenated into ONE model call (the costly step), whose outputs are split back per request
for the rest of the chain (``run_batched``). Requests then carry a leading batch dimension of 1
(inputs ``[1, n_clicks]``, answers ``[1, n_sessions, ...]``).

Errors: an exception that carries ``bad_request = True`` (``gtcrec.serving.operators.BadRequest``)
is returned to the client as ``bad request: <message>`` (status INVALID_ARG: gRPC
INVALID_ARGUMENT, HTTP 400); anything else as ``internal error: <type>: <message>`` (INTERNAL),
with the traceback in the server log. One failing request
never fails the others of the same ``execute`` call.

Warm-up: a new copy of the model answers its first requests slowly (TorchScript optimises a
traced model during its first calls: 80-180 ms per request for the first two requests of each
instance on 2 CPU cores, against ~4 ms afterwards). ``initialize`` therefore answers the version's
own reference request (``<version>/warmup_request.json``, written by the export) and parts of it
of other sizes, a few times, before it returns: Triton marks a version READY, and routes requests
to it, only once every instance is initialised, so no client request meets a cold model. A
warm-up request that fails makes the load fail (the version cannot answer): Triton keeps serving
the previous version. Without the file (older exports) there is no warm-up.

Click log (opt-in): when the environment variable ``GTCREC_CLICK_LOG`` names a folder (the stub
process inherits the server's environment; :class:`gtcrec.serving.server.TritonServer` sets it with
``click_log=``), each instance keeps a :class:`ClickLog`. After a request has been answered (lean,
dynamically batched or merlin executor), its three input arrays are copied onto a bounded queue
(``put_nowait``: a full queue drops the record and counts its clicks; logging never fails or delays
a request). A daemon thread writes them as parquet segments ``clicks-<prefix>-<seq>.parquet``
(session_id, talk_id, timestamp as in the documented clicks format, plus logged_at and
model_version), each written under a hidden name and renamed, rotated every
``GTCREC_CLICK_LOG_SECONDS`` (default 10) or ``GTCREC_CLICK_LOG_RECORDS`` clicks (default 100,000).
The prefix names the host, the process, the Triton instance and the version, so the instances of
several servers can share one folder. ``finalize`` (Triton unloads the version or stops) writes
what is still queued. A folder that cannot be written, or a bad setting, makes the load fail.
``gtcrec.live.read_click_log`` reads the folder back.

Only clicks the deploying app vouches for are logged: the server is given a logging key
(``$GTCREC_LOG_KEY``; no key, or a key that cannot be one, makes the load fail), and a request is
logged only when its Triton request parameters (``request.parameters()``, a JSON object) hold that key
in ``gtcrec_log_key``; ``gtcrec_client_id`` names the attendee or client the app answers for. Every
other request is answered as usual and never logged: it is counted (``requests_unvouched`` without a
key, ``requests_bad_key`` with another one). Each logged click records its ``client_id`` and its
``source`` (``key-`` and 8 hex digits of the key's SHA-256: which key vouched, never the key).

The file imports nothing from ``gtcrec`` (a self-contained export runs without it) and can be
imported outside Triton (for ``lean_chain`` / ``run_chain`` / ``ClickLog``).
"""
import atexit
import hashlib
import hmac
import json
import os
import queue
import re
import secrets
import socket
import sys
import threading
import time
import traceback
import weakref
from pathlib import Path

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (export, tests)
    pb_utils = None

PARAMETER = "executor"
LEAN_CHAIN_FILE = "lean_chain.pkl"  # the operators as their Merlin-free cores (gtcrec.serving.export.write_lean_chain)
MODES = ("lean", "merlin")
WARMUP_FILE = "warmup_request.json"  # in the version folder, next to ensemble/
WARMUP_ROUNDS = 2  # each warm-up request is answered this many times


def write_warmup_request(version_dir, request) -> Path:
    """Save request arrays (session_id, talk_id as bytes or str; timestamp) as the warm-up request of
    an exported version."""
    def text(v):
        return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)

    doc = {name: ([int(x) for x in np.asarray(values).ravel()] if name == "timestamp"
                  else [text(x) for x in np.asarray(values, dtype=object).ravel()])
           for name, values in request.items()}
    path = Path(version_dir) / WARMUP_FILE
    path.write_text(json.dumps(doc))
    return path


def read_warmup_request(version_dir):
    """The saved warm-up request as request arrays (strings as bytes), or ``None`` without the file."""
    path = Path(version_dir) / WARMUP_FILE
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    return {name: (np.asarray(values, dtype=np.int64) if name == "timestamp"
                   else np.array([v.encode("utf-8", "surrogateescape") for v in values], dtype=object))
            for name, values in doc.items()}


def warmup_requests(request):
    """The request, and requests of its first 1, 2 and 4 sessions: the model is then called with
    several batch sizes (a traced model is optimised per input shape it sees)."""
    sessions = np.asarray(request["session_id"], dtype=object)
    order = list(dict.fromkeys(sessions.tolist()))
    out = [request]
    for n in (1, 2, 4):
        if n < len(order):
            keep = np.isin(sessions, np.array(order[:n], dtype=object))
            out.append({name: np.asarray(values)[keep] for name, values in request.items()})
    return out


def lean_chain(ensemble):
    """The operators of ``ensemble`` in order, if its graph is a chain of operators that all have
    ``transform_arrays``; else ``None`` (use Merlin's executor)."""
    from merlin.dag import postorder_iter_nodes
    from merlin.dag.ops.selection import SelectionOp

    chain = []
    for node in postorder_iter_nodes(ensemble.graph.output_node, flatten_subgraphs=True):
        if isinstance(node.op, SelectionOp) and not node.parents_with_dependencies:
            continue  # the request columns
        parents = node.parents_with_dependencies
        if len(parents) != 1 or not hasattr(node.op, "transform_arrays"):
            return None
        if chain and parents[0].op is not chain[-1]:
            return None
        chain.append(node.op)
    return chain or None


def run_chain(chain, arrays):
    """Request arrays -> answer arrays through the operators' ``transform_arrays``."""
    for op in chain:
        arrays = op.transform_arrays(arrays)
    return arrays


def model_step(chain):
    """Index of the model operator in a lean chain (the one with ``predict`` and ``input_col``)."""
    found = [i for i, op in enumerate(chain) if hasattr(op, "predict") and hasattr(op, "input_col")]
    if len(found) != 1:
        raise ValueError(f"dynamic batching needs exactly one model operator in the chain, found {len(found)}")
    return found[0]


def run_batched(chain, batch):
    """Answer several requests with ONE call of the model operator.

    ``batch``: a list of request arrays. Returns one entry per request: its answer arrays, or the
    exception it raised (a bad request does not fail the others)."""
    i = model_step(chain)
    model = chain[i]
    results = [None] * len(batch)
    ready = []
    for j, arrays in enumerate(batch):
        try:
            ready.append((j, run_chain(chain[:i], arrays)))
        except Exception as exc:  # noqa: BLE001 - reported for this request only
            results[j] = exc
    if not ready:
        return results
    values_name, offsets_name = f"{model.input_col}__values", f"{model.input_col}__offsets"
    values = [np.asarray(part[values_name]) for _, part in ready]
    offsets = [np.asarray(part[offsets_name], dtype=np.int64) for _, part in ready]
    shifts = np.cumsum([0] + [len(v) for v in values[:-1]])
    merged = {values_name: np.concatenate(values),
              offsets_name: np.concatenate([np.zeros(1, np.int64)] + [o[1:] + s for o, s in zip(offsets, shifts)])}
    try:
        out = model.transform_arrays(merged)
    except Exception as exc:  # noqa: BLE001 - the model failed for all of them
        for j, _ in ready:
            results[j] = exc
        return results
    produced = [name for name in out if name not in merged]
    row = 0
    for (j, part), offs in zip(ready, offsets):
        n = len(offs) - 1
        part = dict(part)
        for name in produced:
            part[name] = out[name][row:row + n]
        row += n
        try:
            results[j] = run_chain(chain[i + 1:], part)
        except Exception as exc:  # noqa: BLE001
            results[j] = exc
    return results


# ----------------------------------------------------------------------------------------------
# The click log
# ----------------------------------------------------------------------------------------------

CLICK_LOG_ENV = "GTCREC_CLICK_LOG"  # a folder: the instances log the clicks they answered there
CLICK_LOG_SECONDS_ENV = "GTCREC_CLICK_LOG_SECONDS"  # a segment at least this often (while clicks come)
CLICK_LOG_RECORDS_ENV = "GTCREC_CLICK_LOG_RECORDS"  # at most this many clicks per segment
CLICK_LOG_SECONDS = 10.0
CLICK_LOG_RECORDS = 100_000
CLICK_LOG_QUEUE = 10_000  # answered requests waiting for the writer; more are dropped and counted
CLICK_LOG_INPUTS = ("session_id", "talk_id", "timestamp")
LOG_KEY_ENV = "GTCREC_LOG_KEY"  # the key a request must carry to be logged (set by the server's starter)
LOG_KEY_PARAMETER = "gtcrec_log_key"  # request parameters: the logging key ...
CLIENT_PARAMETER = "gtcrec_client_id"  # ... and the attendee / client id the app answers for
MAX_CLIENT_ID = 128  # characters of a client id kept
SEGMENT_PREFIX = "clicks-"  # segments: clicks-<prefix>-<seq:06d>.parquet
STATS_SUFFIX = ".stats.json"  # the writer's counters: clicks-<prefix>.stats.json
_STOP = object()
_OPEN_LOGS: "weakref.WeakSet" = weakref.WeakSet()


def segment_name(prefix: str, seq: int) -> str:
    return f"{SEGMENT_PREFIX}{prefix}-{seq:06d}.parquet"


def stats_name(prefix: str) -> str:
    return f"{SEGMENT_PREFIX}{prefix}{STATS_SUFFIX}"


def click_log_prefix(instance: str, version, host: str | None = None, pid: int | None = None,
                     token: str | None = None) -> str:
    """``<host>-<pid>-<instance>-v<version>-<token>``: unique per writer, so the instances of several
    servers (replicas of a fleet) can write into one folder. ``token`` (random by default) keeps a
    restarted process that got the same pid on the same host (a container restart) from overwriting
    the segments of the one before. Characters other than letters, digits, ``_ . -`` become ``_``."""
    parts = [host or socket.gethostname(), str(os.getpid() if pid is None else pid), str(instance),
             f"v{version}", token or secrets.token_hex(3)]
    return "-".join(re.sub(r"[^A-Za-z0-9_.-]", "_", part) or "_" for part in parts).lstrip(".")


def key_source(key: str) -> str:
    """What the log records as the source of a vouched click: a fingerprint of the key, never the key."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def checked_log_key(key) -> str:
    """``key`` stripped, or ValueError saying why it cannot be a logging key (printable ASCII without
    spaces or ``, : =``; :func:`gtcrec.serving.access.check_log_key` applies the same rule at start)."""
    key = str(key or "").strip()
    if not key:
        raise ValueError(f"the click log needs a logging key (${LOG_KEY_ENV}): requests are logged only when they "
                         "carry it")
    bad = sorted({c for c in key if c in ",:=" or c.isspace() or not c.isprintable() or not c.isascii()})
    if bad:
        raise ValueError(f"the logging key holds characters it cannot take: {bad}")
    return key


def _close_open_logs() -> None:  # at interpreter exit: a stub that exits without finalize still flushes
    for log in list(_OPEN_LOGS):
        try:
            log.close(timeout=5.0)
        except Exception:  # noqa: BLE001 - best effort
            pass


atexit.register(_close_open_logs)


class ClickLog:
    """Writes the clicks of answered requests into parquet segments of ``folder``, from a daemon thread.

    :meth:`put` (the request path) copies the request's session_id, talk_id (bytes or str) and
    timestamp (int64 epoch ms) arrays onto a queue of ``queue_size`` records with ``put_nowait``; when
    the queue is full (the disk is slower than the traffic) the record is dropped and its clicks are
    counted in ``clicks_dropped``. It never raises and never waits.

    The thread writes a segment ``clicks-<prefix>-<seq:06d>.parquet`` when ``max_records`` clicks are
    waiting (exactly that many go into it) and when the oldest waiting click has waited
    ``max_seconds``; nothing is written while no click comes. A segment is written to a hidden name
    (``.clicks-...parquet.tmp``) and renamed, so a reader never sees a partial segment under its
    final name. Columns: session_id, talk_id (string), timestamp (timestamp[ms, UTC]), logged_at
    (float64 unix seconds: when the request was answered), model_version (int64). Ids that are not
    UTF-8 are written with backslash escapes.

    ``clicks-<prefix>.stats.json`` (written the same way at the start, after every segment, when drops
    were counted, and at :meth:`close`) holds the counters: clicks_queued (accepted), clicks_logged
    (in segments), clicks_dropped / requests_dropped (queue full, or after close), clicks_lost (a
    segment that could not be written: the error goes to stderr, the clicks are not retried),
    segments, write_errors, closed. :meth:`close` writes what is queued and stops the thread.
    """

    def __init__(self, folder, prefix: str, max_records: int = CLICK_LOG_RECORDS,
                 max_seconds: float = CLICK_LOG_SECONDS, queue_size: int = CLICK_LOG_QUEUE,
                 model_version: int = 0, meta: dict | None = None, poll_seconds: float = 1.0,
                 key: str | None = None):
        # the writing path runs once now (at load time, before the version is ready): its first run
        # imports modules (pyarrow.parquet, pandas for object arrays) while holding the GIL, which in
        # the writer thread would hold up the requests for about a second; no pyarrow fails the load
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.model_version = int(model_version)
        one = np.array([b"x"], dtype=object)
        pq.write_table(self._table(one, one, np.zeros(1, np.int64), np.zeros(1), one), pa.BufferOutputStream())
        self._key = None if key is None else checked_log_key(key).encode()
        self.source = "" if key is None else key_source(self._key.decode())

        if int(max_records) < 1 or not float(max_seconds) > 0 or int(queue_size) < 1:
            raise ValueError(f"click log: max_records ({max_records}) and queue_size ({queue_size}) must be >= 1 "
                             f"and max_seconds ({max_seconds}) > 0")
        if not prefix or "/" in prefix or os.sep in prefix or prefix.startswith("."):
            raise ValueError(f"click log: bad prefix {prefix!r}")
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_records, self.max_seconds = int(max_records), float(max_seconds)
        self.queue_size, self.poll_seconds = int(queue_size), float(poll_seconds)
        self.meta = dict(meta or {})
        self.started_at = time.time()
        self._queue: queue.Queue = queue.Queue(maxsize=self.queue_size)
        self._lock = threading.Lock()
        self._closed = False
        self._seq = 0
        self.requests_queued = self.clicks_queued = 0
        self.requests_dropped = self.clicks_dropped = 0
        self.clicks_logged = self.segments = 0
        self.write_errors = self.clicks_lost = 0
        self.requests_unvouched = self.clicks_unvouched = 0  # no logging key: answered, never logged
        self.requests_bad_key = self.clicks_bad_key = 0  # another key: answered, never logged
        self._write_stats(raise_errors=True)  # a folder that cannot be written fails here, loudly
        self._thread = threading.Thread(target=self._run, name=f"gtcrec-click-log-{prefix}", daemon=True)
        self._thread.start()
        _OPEN_LOGS.add(self)

    # -- the request path ---------------------------------------------------------------------
    @staticmethod
    def _parameters(parameters) -> dict:
        """Request parameters as a dict: the JSON text of ``request.parameters()``, or a dict; ``{}`` when
        they cannot be read. Never raises."""
        try:
            if isinstance(parameters, (str, bytes)):
                parameters = json.loads(parameters or "{}")
        except ValueError:
            return {}
        return parameters if isinstance(parameters, dict) else {}

    def vouched(self, parameters) -> "str | None":
        """The client id of a request whose parameters (see :meth:`_parameters`) carry this log's key; None
        otherwise (not to be logged). Never raises."""
        parameters = self._parameters(parameters)
        sent = parameters.get(LOG_KEY_PARAMETER)
        if self._key is None or not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), self._key):
            return None
        client = parameters.get(CLIENT_PARAMETER, "")
        return str(client if isinstance(client, (str, int)) else "")[:MAX_CLIENT_ID]

    def put_request(self, parameters, session_id, talk_id, timestamp) -> bool:
        """:meth:`put` the clicks of an answered request when its parameters carry the key (see
        :meth:`vouched`); otherwise count them (``requests_unvouched`` / ``requests_bad_key``). The
        parameters are parsed once. Never raises, never waits."""
        parameters = self._parameters(parameters)
        client = self.vouched(parameters)
        if client is not None:
            return self.put(session_id, talk_id, timestamp, client_id=client)
        try:
            n = int(np.size(timestamp))
        except Exception:  # noqa: BLE001
            n = 0
        with self._lock:
            if LOG_KEY_PARAMETER in parameters:
                self.requests_bad_key += 1
                self.clicks_bad_key += n
            else:
                self.requests_unvouched += 1
                self.clicks_unvouched += n
        return False

    def put(self, session_id, talk_id, timestamp, logged_at: float | None = None, client_id: str = "") -> bool:
        """Queue the clicks of one answered request (copies of the arrays), from ``client_id``. False when
        they were dropped (queue full, log closed, arrays of different lengths); never raises, never waits."""
        n = 0
        try:
            ts = np.array(timestamp, dtype=np.int64, copy=True).reshape(-1)
            n = len(ts)
            record = (np.array(session_id, dtype=object, copy=True).reshape(-1),
                      np.array(talk_id, dtype=object, copy=True).reshape(-1), ts,
                      time.time() if logged_at is None else float(logged_at), str(client_id))
            ok = len(record[0]) == len(record[1]) == n
            with self._lock:
                if ok and not self._closed:
                    try:
                        self._queue.put_nowait(record)
                    except queue.Full:
                        pass
                    else:
                        self.requests_queued += 1
                        self.clicks_queued += n
                        return True
                self.requests_dropped += 1
                self.clicks_dropped += n
            return False
        except Exception:  # noqa: BLE001 - logging never fails a request
            self.requests_dropped += 1
            self.clicks_dropped += n
            return False

    # -- the writer thread --------------------------------------------------------------------
    def _run(self) -> None:
        pending: list = []  # records waiting for a segment
        waiting = 0  # their clicks
        since = None  # monotonic time the oldest of them arrived
        dropped_seen = 0
        stopping = False
        while not stopping:
            try:
                timeout = self.poll_seconds if since is None else since + self.max_seconds - time.monotonic()
                try:
                    item = self._queue.get(timeout=max(0.0, min(timeout, self.poll_seconds)))
                except queue.Empty:
                    item = None
                while item is not None:  # take what is there without waiting
                    if item is _STOP:
                        stopping = True
                    else:
                        pending.append(item)
                        waiting += len(item[2])
                        since = time.monotonic() if since is None else since
                        if waiting >= self.max_records:
                            break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        item = None
                while waiting >= self.max_records:
                    pending, waiting = self._flush(pending, self.max_records)
                    since = time.monotonic() if waiting else None
                if since is not None and time.monotonic() - since >= self.max_seconds:
                    pending, waiting = self._flush(pending, waiting)
                    since = None
                if self.clicks_dropped != dropped_seen:
                    dropped_seen = self.clicks_dropped
                    self._write_stats()
                stopping = stopping or self._closed  # close() could not queue _STOP into a full queue
            except Exception as exc:  # noqa: BLE001 - the thread must live on
                self._report(f"click log writer: {type(exc).__name__}: {exc}")
        # closing: the queue takes no new record (close() set _closed first); write what it holds
        try:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    pending.append(item)
                    waiting += len(item[2])
            while waiting:
                pending, waiting = self._flush(pending, min(waiting, self.max_records))
        except Exception as exc:  # noqa: BLE001
            self._report(f"click log writer: {type(exc).__name__}: {exc}")
        finally:
            self._write_stats(closed=True)

    def _flush(self, pending: list, n: int) -> tuple[list, int]:
        """Write the first ``n`` waiting clicks as one segment; returns what is left (one record)."""
        try:
            sessions = np.concatenate([r[0] for r in pending])
            talks = np.concatenate([r[1] for r in pending])
            times = np.concatenate([r[2] for r in pending])
            logged = np.concatenate([np.broadcast_to(np.asarray(r[3], dtype=np.float64), (len(r[2]),))
                                     for r in pending])
            clients = np.concatenate([np.broadcast_to(np.asarray(r[4], dtype=object), (len(r[2]),))
                                      for r in pending])
        except Exception as exc:  # noqa: BLE001 - never keep (and retry) what cannot be written
            lost = sum(len(r[2]) for r in pending)
            self.write_errors += 1
            self.clicks_lost += lost
            self._report(f"could not gather {lost} clicks ({type(exc).__name__}: {exc}); lost")
            return [], 0
        self._write_segment(sessions[:n], talks[:n], times[:n], logged[:n], clients[:n])
        rest = len(times) - n
        if not rest:
            return [], 0
        return [(sessions[n:], talks[n:], times[n:], logged[n:], clients[n:])], rest

    @staticmethod
    def _strings(values):
        import pyarrow as pa

        try:
            return pa.array(values, type=pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # not UTF-8, or not text: escape what cannot be kept
            return pa.array([v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v)
                             for v in values], type=pa.string())

    def _table(self, sessions, talks, times, logged, clients):
        import pyarrow as pa

        return pa.table({
            "session_id": self._strings(sessions),
            "talk_id": self._strings(talks),
            "timestamp": pa.array(times, type=pa.timestamp("ms", tz="UTC")),
            "logged_at": pa.array(logged, type=pa.float64()),
            "model_version": pa.array(np.full(len(times), self.model_version, dtype=np.int64)),
            "client_id": self._strings(clients),
            "source": pa.array([getattr(self, "source", "")] * len(times), type=pa.string()),
        })

    def _write_file(self, table, path: Path) -> None:
        import pyarrow.parquet as pq

        with open(path, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())

    def _write_segment(self, sessions, talks, times, logged, clients) -> bool:
        """One segment under its final name, or nothing there (the error printed and counted)."""
        name = segment_name(self.prefix, self._seq)
        tmp = self.folder / f".{name}.tmp"
        try:
            self._write_file(self._table(sessions, talks, times, logged, clients), tmp)
            os.replace(tmp, self.folder / name)
        except Exception as exc:  # noqa: BLE001 - counted, never raised into the requests
            self.write_errors += 1
            self.clicks_lost += len(times)
            self._report(f"could not write {self.folder / name} ({len(times)} clicks lost): "
                         f"{type(exc).__name__}: {exc}")
            try:
                tmp.unlink()
            except OSError:
                pass
            self._write_stats()
            return False
        self._seq += 1
        self.segments += 1
        self.clicks_logged += len(times)
        self._write_stats()
        return True

    def _report(self, message: str) -> None:
        print(f"[gtcrec click log] {self.prefix}: {message}", file=sys.stderr, flush=True)

    # -- counters -----------------------------------------------------------------------------
    @property
    def stats_path(self) -> Path:
        return self.folder / stats_name(self.prefix)

    def stats(self) -> dict:
        return {**self.meta, "prefix": self.prefix, "folder": str(self.folder), "model_version": self.model_version,
                "started_at": self.started_at, "updated_at": time.time(), "closed": self._closed,
                "requests_queued": self.requests_queued, "clicks_queued": self.clicks_queued,
                "clicks_logged": self.clicks_logged, "segments": self.segments,
                "requests_dropped": self.requests_dropped, "clicks_dropped": self.clicks_dropped,
                "write_errors": self.write_errors, "clicks_lost": self.clicks_lost,
                "requests_unvouched": self.requests_unvouched, "clicks_unvouched": self.clicks_unvouched,
                "requests_bad_key": self.requests_bad_key, "clicks_bad_key": self.clicks_bad_key,
                "source": self.source, "max_records": self.max_records, "max_seconds": self.max_seconds,
                "queue_size": self.queue_size}

    def _write_stats(self, closed: bool = False, raise_errors: bool = False) -> None:
        doc = self.stats()
        doc["closed"] = bool(closed)
        tmp = self.folder / f".{stats_name(self.prefix)}.tmp"
        try:
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, self.stats_path)
        except Exception as exc:  # noqa: BLE001
            if raise_errors:
                raise
            self._report(f"could not write {self.stats_path}: {type(exc).__name__}: {exc}")

    # -- the end --------------------------------------------------------------------------------
    def close(self, timeout: float = 60.0) -> dict:
        """Stop taking clicks, write what is queued (segments of at most ``max_records``), write the
        stats; returns them. Waits at most ``timeout`` seconds for the writer."""
        with self._lock:
            already = self._closed
            self._closed = True
        if not already:
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:  # the writer drains the queue once it sees the flag
                pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._report(f"still writing after {timeout:g} s; what is left may be lost")
        _OPEN_LOGS.discard(self)
        return self.stats()

    def __enter__(self) -> "ClickLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _env_number(environ, name: str, kind, default):
    text = str(environ.get(name, "")).strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not value > 0:
        raise ValueError(f"${name} must be a number > 0, got {text!r}")
    return value


def click_log_from_env(instance: str, version, environ=None, **kwargs) -> "ClickLog | None":
    """The instance's :class:`ClickLog` when ``$GTCREC_CLICK_LOG`` names a folder, else ``None``
    (``$GTCREC_CLICK_LOG_SECONDS``, ``$GTCREC_CLICK_LOG_RECORDS`` set the rotation; a bad value raises)."""
    environ = os.environ if environ is None else environ
    folder = str(environ.get(CLICK_LOG_ENV, "")).strip()
    if not folder:
        return None
    seconds = _env_number(environ, CLICK_LOG_SECONDS_ENV, float, CLICK_LOG_SECONDS)
    records = _env_number(environ, CLICK_LOG_RECORDS_ENV, int, CLICK_LOG_RECORDS)
    key = checked_log_key(environ.get(LOG_KEY_ENV))  # no key, or one it cannot be: the load fails
    meta = {"host": socket.gethostname(), "pid": os.getpid(), "instance": str(instance), "version": str(version)}
    return ClickLog(folder, click_log_prefix(instance, version), max_records=records, max_seconds=seconds,
                    model_version=int(version) if str(version).isdigit() else 0, meta=meta, key=key, **kwargs)


def _model_repository(args):
    repo = args["model_repository"]
    # some Triton releases pass the path of model.py instead of the model's folder
    return Path(repo).parent if repo.endswith(".py") else Path(repo)


def _error(message, code):
    """A TritonError with a status code where the backend supports codes (gRPC INVALID_ARGUMENT
    for a bad request, as Triton's own input checks answer)."""
    code_value = getattr(pb_utils.TritonError, code, None)
    if code_value is None:
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code_value)


def load_lean_chain(version_dir):
    """``(operators, input names, operator names)`` from a version's lean chain file (written at export next to
    ``ensemble/``: the graph's operators as their Merlin-free cores), their models and indexes loaded; ``None``
    without the file. Nothing of Merlin is imported: a python-backend process starts in a fraction of the time."""
    import pickle

    path = Path(version_dir) / LEAN_CHAIN_FILE
    if not path.is_file():
        return None
    payload = pickle.loads(path.read_bytes())
    for op in payload["ops"]:
        if hasattr(op, "load_artifacts"):
            op.load_artifacts(str(Path(version_dir) / "ensemble"))
    return payload["ops"], list(payload["inputs"]), list(payload["names"])


class TritonPythonModel:
    def initialize(self, args):
        version_dir = _model_repository(args) / str(args["model_version"])
        path = version_dir / "ensemble"
        config = json.loads(args["model_config"])
        mode = config.get("parameters", {}).get(PARAMETER, {}).get("string_value", "lean")
        if mode not in MODES:
            raise ValueError(f"parameter {PARAMETER!r} must be one of {MODES}, got {mode!r}")
        lean = load_lean_chain(version_dir) if mode == "lean" else None
        if lean is not None:
            self.ensemble = None
            self.chain, self.input_names, names = lean
        else:
            from merlin.dag import postorder_iter_nodes
            from merlin.systems.dag import Ensemble

            self.ensemble = Ensemble.load(str(path))
            for node in postorder_iter_nodes(self.ensemble.graph.output_node, flatten_subgraphs=True):
                node.op.load_artifacts(str(path))
            self.chain = lean_chain(self.ensemble) if mode == "lean" else None
            self.input_names = list(self.ensemble.input_schema.column_names)
            names = [type(op).__name__ for op in self.chain or []]
        self.mode = "lean" if self.chain else "merlin"
        self.batched = int(config.get("max_batch_size", 0)) > 0
        if self.batched:
            if not self.chain:
                raise ValueError("dynamic batching (max_batch_size > 0) needs the lean executor and a chain graph")
            model_step(self.chain)
        self.outputs = [(out["name"], pb_utils.triton_string_to_numpy(out["data_type"]))
                        for out in config["output"]]
        name = f"{args['model_name']} v{args['model_version']}"
        print(f"[gtcrec executor] {name}: {self.mode} executor "
              f"({' >> '.join(names) if self.chain else 'Merlin LocalExecutor'})"
              f"{', dynamic batching' if self.batched else ''}"
              f"{'; its operators loaded without Merlin (' + LEAN_CHAIN_FILE + ')' if lean else ''}",
              file=sys.stderr, flush=True)
        self.warmup_ms = self.warm_up(path.parent, name)
        self.click_log = None
        if os.environ.get(CLICK_LOG_ENV, "").strip():
            if not set(CLICK_LOG_INPUTS) <= set(self.input_names):
                print(f"[gtcrec executor] {name}: ${CLICK_LOG_ENV} is set but the inputs are not "
                      f"{', '.join(CLICK_LOG_INPUTS)}: no click log", file=sys.stderr, flush=True)
            else:
                self.click_log = click_log_from_env(args.get("model_instance_name", args["model_name"]),
                                                    args["model_version"])
                log = self.click_log
                print(f"[gtcrec executor] {name}: logging clicks to {log.folder} as "
                      f"{segment_name(log.prefix, 0).replace('000000', 'NNNNNN')} (a segment every "
                      f"{log.max_seconds:g} s or {log.max_records} clicks)", file=sys.stderr, flush=True)

    def warm_up(self, version_dir, name=""):
        """Answer the version's warm-up request (and parts of it) ``WARMUP_ROUNDS`` times; returns the
        milliseconds of each call (empty: no warm-up file, or not the lean executor). Raises when a
        call fails, which fails the load."""
        request = read_warmup_request(version_dir)
        if request is None or not self.chain:
            why = "no warm-up request" if request is None else "the merlin executor is not warmed up"
            print(f"[gtcrec executor] {name}: {why}", file=sys.stderr, flush=True)
            return []
        times = []
        for _ in range(WARMUP_ROUNDS):
            for part in warmup_requests(request):
                started = time.perf_counter()
                try:
                    if self.batched:
                        result = run_batched(self.chain, [part])[0]
                        if isinstance(result, Exception):
                            raise result
                    else:
                        run_chain(self.chain, dict(part))
                except Exception as exc:
                    raise RuntimeError(f"warm-up request failed ({type(exc).__name__}: {exc}); this version "
                                       "cannot answer its own reference request") from exc
                times.append((time.perf_counter() - started) * 1e3)
        print(f"[gtcrec executor] {name}: warmed up with {len(times)} calls in {sum(times):.0f} ms "
              f"(first {times[0]:.1f} ms, last {times[-1]:.1f} ms)", file=sys.stderr, flush=True)
        return times

    def _arrays(self, request):
        arrays = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:  # Triton checks inputs already; keep a clear message anyway
                raise KeyError(f"missing input {name!r}")
            arr = tensor.as_numpy()
            arrays[name] = arr.reshape(-1) if self.batched else arr  # [1, n] -> [n]
        return arrays

    def _response(self, out):
        return pb_utils.InferenceResponse([
            pb_utils.Tensor(name, np.ascontiguousarray(out[name][None] if self.batched else out[name])
                            .astype(dtype, copy=False))
            for name, dtype in self.outputs])

    def _log(self, request, arrays=None):
        """Queue the clicks of an answered request (its arrays, or read from ``request``) when its
        parameters carry the logging key, else count them; never fails, never waits."""
        log = self.click_log
        if log is None:
            return
        try:
            if arrays is None:
                arrays = self._arrays(request)
            log.put_request(request.parameters(), arrays["session_id"], arrays["talk_id"], arrays["timestamp"])
        except Exception:  # noqa: BLE001 - an answered request never fails because of its log
            log.requests_dropped += 1

    def _lean(self, request):
        arrays = self._arrays(request)
        response = self._response(run_chain(self.chain, arrays))
        self._log(request, arrays)
        return response

    def _merlin(self, request):
        from merlin.systems.dag.runtimes.triton import TritonExecutorRuntime
        from merlin.systems.triton.conversions import (tensor_table_to_triton_response,
                                                       triton_request_to_tensor_table)

        inputs = triton_request_to_tensor_table(request, self.ensemble.input_schema)
        outputs = self.ensemble.transform(inputs, runtime=TritonExecutorRuntime())
        response = tensor_table_to_triton_response(outputs, self.ensemble.output_schema)
        self._log(request)
        return response

    @staticmethod
    def _failure(exc):
        cause = exc
        while getattr(cause, "__cause__", None) is not None and not getattr(cause, "bad_request", False):
            cause = cause.__cause__  # Merlin wraps operator errors
        if getattr(cause, "bad_request", False):
            error = _error(f"bad request: {cause}", "INVALID_ARG")
        else:
            error = _error(f"internal error: {type(exc).__name__}: {exc}", "INTERNAL")
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        return pb_utils.InferenceResponse(output_tensors=[], error=error)

    def _execute_batched(self, requests):
        batch, failed = [], {}
        for j, request in enumerate(requests):
            try:
                batch.append((j, self._arrays(request)))
            except Exception as exc:  # noqa: BLE001
                failed[j] = exc
        results = dict(zip([j for j, _ in batch], run_batched(self.chain, [a for _, a in batch])))
        arrays_of = dict(batch)
        results.update(failed)
        responses = []
        for j in range(len(requests)):
            result = results[j]
            if isinstance(result, Exception):
                responses.append(self._failure(result))
                continue
            try:
                responses.append(self._response(result))
            except Exception as exc:  # noqa: BLE001
                responses.append(self._failure(exc))
                continue
            self._log(requests[j], arrays_of[j])
        return responses

    def execute(self, requests):
        if self.batched:
            return self._execute_batched(requests)
        answer = self._lean if self.chain else self._merlin
        responses = []
        for request in requests:
            try:
                responses.append(answer(request))
            except Exception as exc:  # noqa: BLE001 - every failure becomes this request's error
                responses.append(self._failure(exc))
        return responses

    def finalize(self):
        """Triton unloads this version (or stops): write the clicks still queued."""
        log = getattr(self, "click_log", None)
        if log is not None:
            self.click_log = None
            stats = log.close()
            print(f"[gtcrec executor] click log {log.prefix} closed: {stats['clicks_logged']} clicks in "
                  f"{stats['segments']} segments, {stats['clicks_dropped']} dropped, {stats['clicks_lost']} lost "
                  "to write errors", file=sys.stderr, flush=True)
