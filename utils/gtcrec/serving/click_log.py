"""The click log of the served model: the clicks of answered requests, written as parquet segments.

Opt-in: when the environment variable ``GTCREC_CLICK_LOG`` names a folder (the stub
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

The export copies this file next to the executor's ``model.py`` as ``gtcrec_click_log.py`` (the python
backend puts the version folder on ``sys.path``), so a served version needs no gtcrec; it imports nothing
from ``gtcrec`` and is imported from the package outside Triton (the server's starter, the tests).
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
import weakref
from pathlib import Path

import numpy as np

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
