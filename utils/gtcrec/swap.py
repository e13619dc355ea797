"""Catalog swap: a new event's talks in the trained model, hot-loaded into a running Triton server.

The trained model scores talks through ONE table of text embeddings (input lookup and weight-tied
output layer). A new event (new talks, no clicks yet) therefore needs no retraining: embed the new
catalog, build its vocabulary and item table, replace the table in the model
(:func:`gtcrec.model.swap_item_table`), trace, export the serving ensemble as the NEXT version of the
served model and ask the running Triton server (``--model-control-mode=explicit``) to load it over
gRPC. Triton keeps answering with the old version until the new one is ready, then switches, so the
swap costs no failed requests. :func:`swap_catalog` does all of it; notebook 06, the benchmark and the
``gtcrec-swap`` command call the same function.

Safety rules, in order:

1. **Validate before touching anything.** The new catalog is read with
   :func:`gtcrec.data.load_catalog` (missing column, duplicate or empty talk id, empty title, bad day
   or slot) plus two swap rules: no talk id of the catalog being served (a new event's ids must be
   new, so that answers tell the catalogs apart and old sessions cannot leak into new codes), and at
   least ``K`` talks (the candidates the traced model returns). Problems raise
   :class:`gtcrec.data.DataValidationError` naming file, row and column; the repository and the
   server are not touched.
2. **A failed load leaves the old version serving.** If Triton cannot load the new version, the
   version folder is moved to ``<model>/archive/`` (Triton ignores folders whose name is not a
   number), the model's ``config.pbtxt`` is restored, and :class:`SwapError` carries the server's
   message and the version still serving.
3. **Rollback is a load too.** :func:`rollback` moves the serving version to the archive, restores
   the previous version's ``config.pbtxt`` and loads: Triton serves the highest version left.

Each model folder keeps ``gtcrec_swap_history.json`` (every swap, failed load and rollback, and the
``config.pbtxt`` of every version), and a lock file so that two swaps cannot run at once.

Serving settings of the new version (answer size ``k``, ``max_len``, CPU instances, executor, padding,
dynamic batching) are read from the version being replaced, so the new version is served the same
way; only ``K`` (candidates the traced model returns) can be chosen. The fallback ranking of the new
version (sessions of unknown talks only) is catalog order: a new event has no clicks yet.

Command line (``gtcrec-swap``)::

    gtcrec-swap NEW_CATALOG --repository REPO --url HOST:GRPC_PORT --model-dir MODEL_DIR
                [--cache DIR] [--k K] [--model-name NAME] [--timeout S] [--json FILE]
    gtcrec-swap --rollback --repository REPO --url HOST:GRPC_PORT [--model-name NAME]
    gtcrec-swap --status --repository REPO --url HOST:GRPC_PORT [--model-name NAME]

Exit status: 0 done; 2 bad arguments or an invalid catalog file (nothing changed); 1 the server
refused the new version or the rollback (the serving version is unchanged, see the message).

The second half of the module measures the swapped model on the new event
(:func:`evaluate_new_event`): the new event's clicks through the NVTabular ETL with the new
vocabulary, every method on the same time-split test sessions.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import inspect
import ipaddress
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from gtcrec import data as gdata
from gtcrec import etl
from gtcrec.data import DataValidationError

DEFAULT_MODEL_NAME = "executor_model"
HISTORY_FILE = "gtcrec_swap_history.json"
LOCK_FILE = ".gtcrec_swap.lock"
ARCHIVE = "archive"  # inside the model folder; not a number, so Triton ignores it
N_RESERVED = etl.RESERVED

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class SwapError(RuntimeError):
    """The server did not switch (a failed load or rollback); the serving version is unchanged.

    ``version``: the version that was tried; ``serving``: the versions READY after the failure;
    ``server_error``: Triton's message."""

    def __init__(self, message: str, version: int | None = None, serving: Sequence[int] = (),
                 server_error: str | None = None):
        super().__init__(message)
        self.version = version
        self.serving = list(serving)
        self.server_error = server_error


# ----------------------------------------------------------------------------------------------
# Server and repository state
# ----------------------------------------------------------------------------------------------

def grpc_target(url) -> str:
    """``host:port`` for tritonclient.grpc from ``host:port``, ``grpc://host:port`` or a
    :class:`gtcrec.serving.server.TritonServer`."""
    if hasattr(url, "grpc_url"):
        return url.grpc_url
    url = str(url)
    for scheme in ("grpc://", "http://", "https://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    return url.rstrip("/")


def _grpc_client(url):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(grpc_target(url))


def serving_versions(url, model_name: str = DEFAULT_MODEL_NAME) -> list[int]:
    """Versions of ``model_name`` the server reports READY (sorted)."""
    client = _grpc_client(url)
    try:
        index = client.get_model_repository_index(as_json=True).get("models", [])
    finally:
        client.close()
    return sorted(int(m["version"]) for m in index
                  if m.get("name") == model_name and m.get("state") == "READY" and m.get("version"))


def server_index(url, model_name: str | None = None) -> list[dict]:
    """The server's repository index (name, version, state, reason), optionally one model's rows."""
    client = _grpc_client(url)
    try:
        index = client.get_model_repository_index(as_json=True).get("models", [])
    finally:
        client.close()
    return [m for m in index if model_name is None or m.get("name") == model_name]


def repository_versions(repository, model_name: str = DEFAULT_MODEL_NAME) -> list[int]:
    """Numeric version folders of ``repository/model_name`` (the ones Triton sees), sorted."""
    folder = Path(repository) / model_name
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a model folder")
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


@dataclass
class VersionSettings:
    """How a served version was built, read from its exported ensemble and ``config.pbtxt``."""

    version: int
    vocab: list[str]
    max_len: int
    k: int
    k_model: int | None
    pad_sessions: bool
    max_clicks: int | None
    instance_count: int | None
    executor: str | None
    dynamic_batching: tuple[int, int] | None  # (max_batch_size, max_queue_delay_us)
    backend: str

    def export_kwargs(self) -> dict:
        """Keyword arguments of ``gtcrec.serving.export.export_ensemble`` that reproduce these
        settings (only those the installed function accepts)."""
        from gtcrec.serving import export as ex

        wanted = {"max_len": self.max_len, "k": self.k, "instance_count": self.instance_count,
                  "executor": self.executor or "stock", "backend": self.backend,
                  "pad_sessions": self.pad_sessions}
        if self.max_clicks is not None:
            wanted["max_clicks"] = self.max_clicks
        if self.dynamic_batching:
            wanted.update(dynamic_batching=True, max_batch_size=self.dynamic_batching[0],
                          batch_delay_us=self.dynamic_batching[1])
        accepted = inspect.signature(ex.export_ensemble).parameters
        return {k: v for k, v in wanted.items() if k in accepted}


def _parse_config(text: str):
    import tritonclient.grpc.model_config_pb2 as model_config
    from google.protobuf import text_format

    return text_format.Parse(text, model_config.ModelConfig())


def read_version(repository, version: int, model_name: str = DEFAULT_MODEL_NAME) -> VersionSettings:
    """Settings and vocabulary of an exported version (its pickled ensemble; no model is loaded)."""
    from merlin.dag import postorder_iter_nodes
    from merlin.systems.dag import Ensemble

    folder = Path(repository) / model_name
    ens_dir = folder / str(version) / "ensemble"
    if not (ens_dir / "ensemble.pkl").is_file():
        raise FileNotFoundError(f"{ens_dir} holds no exported ensemble")
    ensemble = Ensemble.load(str(ens_dir))
    ops = {type(n.op).__name__: n.op for n in
           postorder_iter_nodes(ensemble.graph.output_node, flatten_subgraphs=True)}
    if "SessionizeClicks" not in ops or "DecodeTopK" not in ops:
        raise ValueError(f"{ens_dir}: not a gtcrec serving graph (operators: {sorted(ops)})")
    sess, decode = ops["SessionizeClicks"], ops["DecodeTopK"]
    k_model = getattr(ops.get("TorchScriptTopK"), "k_model", None)
    config = _parse_config((folder / "config.pbtxt").read_text())
    instances = sum(g.count for g in config.instance_group) or None
    executor = config.parameters["executor"].string_value if "executor" in config.parameters else None
    batching = ((int(config.max_batch_size), int(config.dynamic_batching.max_queue_delay_microseconds))
                if config.max_batch_size > 0 and config.HasField("dynamic_batching") else None)
    backend = "python" if "TorchScriptTopK" in ops else "pytorch"
    return VersionSettings(version=int(version), vocab=list(sess.vocab), max_len=int(sess.max_len),
                           k=int(decode.k), k_model=None if k_model is None else int(k_model),
                           pad_sessions=bool(getattr(sess, "pad", False)),
                           max_clicks=getattr(sess, "max_clicks", None), instance_count=instances,
                           executor=executor, dynamic_batching=batching, backend=backend)


def current_version(url, repository, model_name: str = DEFAULT_MODEL_NAME) -> tuple[int | None, str]:
    """(version, how it was found): the READY version on the server, else the highest in the
    repository (``None`` when there is none)."""
    ready = serving_versions(url, model_name)
    if ready:
        return ready[-1], "serving"
    versions = repository_versions(repository, model_name)
    return (versions[-1], "latest in the repository (the server does not serve it)") if versions else (None, "none")


# ----------------------------------------------------------------------------------------------
# History and locking
# ----------------------------------------------------------------------------------------------

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_history(repository, model_name: str = DEFAULT_MODEL_NAME) -> dict:
    """``{"events": [...], "configs": {version: config.pbtxt text}}`` of a model folder."""
    path = Path(repository) / model_name / HISTORY_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return {"events": [], "configs": {}}


def _write_history(repository, model_name: str, history: dict) -> None:
    path = Path(repository) / model_name / HISTORY_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(history, indent=2))
    os.replace(tmp, path)


def _record(repository, model_name: str, **event) -> None:
    history = read_history(repository, model_name)
    history["events"].append({"time": _now(), **event})
    _write_history(repository, model_name, history)


def _remember_config(repository, model_name: str, version: int, text: str | None = None) -> None:
    history = read_history(repository, model_name)
    if str(version) not in history["configs"]:
        if text is None:
            text = (Path(repository) / model_name / "config.pbtxt").read_text()
        history["configs"][str(version)] = text
        _write_history(repository, model_name, history)


@contextlib.contextmanager
def repository_lock(repository, model_name: str = DEFAULT_MODEL_NAME):
    """Exclusive lock on a model folder for the time of a swap or rollback (raises if taken)."""
    path = Path(repository) / model_name / LOCK_FILE
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SwapError(f"another swap or rollback holds {path}; try again when it is done") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def archive_version(repository, version: int, reason: str, model_name: str = DEFAULT_MODEL_NAME) -> Path:
    """Move a version folder out of Triton's sight, to ``<model>/archive/<version>-<reason>-<time>``."""
    folder = Path(repository) / model_name
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S%f")
    target = folder / ARCHIVE / f"{version}-{reason}-{stamp}"
    target.parent.mkdir(exist_ok=True)
    os.replace(folder / str(version), target)
    return target


def copy_version(repository, version: int, model_name: str = DEFAULT_MODEL_NAME) -> Path:
    """Copy version ``version`` to the next version number (not loaded); returns the new folder.
    For demonstrations and tests of what a load does with a given version folder."""
    folder = Path(repository) / model_name
    target = folder / str(next_version(repository, model_name))
    shutil.copytree(folder / str(version), target)
    return target


def next_version(repository, model_name: str = DEFAULT_MODEL_NAME) -> int:
    """One more than any version the model folder ever had (served, archived or recorded)."""
    folder = Path(repository) / model_name
    seen = set(repository_versions(repository, model_name))
    if (folder / ARCHIVE).is_dir():
        seen |= {int(p.name.split("-")[0]) for p in (folder / ARCHIVE).iterdir() if p.name.split("-")[0].isdigit()}
    history = read_history(repository, model_name)
    seen |= {int(v) for v in history["configs"]}
    seen |= {int(e["version"]) for e in history["events"] if e.get("version") is not None}
    return max(seen, default=0) + 1


# ----------------------------------------------------------------------------------------------
# The new catalog
# ----------------------------------------------------------------------------------------------

def validate_catalog(path, old_vocab: Iterable[str] = (), min_talks: int = 1) -> pd.DataFrame:
    """Read a new event's catalog (CSV or parquet, the catalog format) and check it for a swap.

    Everything :func:`gtcrec.data.load_catalog` checks (only ``talk_id`` (or ``id``) and ``title``
    are required, other documented columns are optional and extra ones kept; empty or duplicate
    talk ids, empty titles, bad days and slots), then: no talk id of ``old_vocab`` (the catalog
    being served), and at least ``min_talks`` talks. Raises :class:`DataValidationError` listing
    every problem with file, row and column; nothing is changed."""
    catalog = gdata.load_catalog(path)
    path = Path(path)
    problems = []
    old = set(map(str, old_vocab))
    id_col = catalog.attrs.get("talk_id_column", "talk_id")
    if old:
        for i, tid in enumerate(catalog["talk_id"].tolist(), start=1):
            if tid in old:
                problems.append(f"{path.name} row {i}, column '{id_col}': talk id {tid!r} is already in the "
                                "catalog being served (a new event needs new talk ids)")
    if len(catalog) < min_talks:
        problems.append(f"{path.name}: {len(catalog)} talks, fewer than the {min_talks} the served model "
                        "returns as candidates (K); use a larger catalog or a smaller K")
    if problems:
        raise DataValidationError(path, problems)
    return catalog


@dataclass
class PreparedCatalog:
    """A validated new catalog, its vocabulary (talk ids in catalog order: code = position + 3) and
    its item table (three zero rows, then one L2-normalised text vector per talk)."""

    path: Path
    catalog: pd.DataFrame
    vocab: list[str]
    table: np.ndarray
    newly_encoded: int
    validate_seconds: float
    encode_seconds: float


def prepare_catalog(path, cache_dir, old_vocab: Iterable[str] = (), min_talks: int = 1,
                    progress: bool = False) -> PreparedCatalog:
    """Validate (:func:`validate_catalog`), embed (cache in ``cache_dir``; the text leaves out empty
    or absent fields, :func:`gtcrec.embeddings.talk_text`), build vocabulary and table."""
    from gtcrec import embeddings

    started = time.perf_counter()
    catalog = validate_catalog(path, old_vocab, min_talks)
    validated = time.perf_counter()
    vectors, newly = embeddings.embed_catalog(catalog, cache_dir, progress=progress)
    encoded = time.perf_counter()
    vocab = etl.vocabulary(catalog).tolist()
    return PreparedCatalog(Path(path), catalog, vocab, etl.item_table(vectors), int(newly),
                           validated - started, encoded - validated)


# ----------------------------------------------------------------------------------------------
# The swapped model and its trace
# ----------------------------------------------------------------------------------------------

def swapped_model(model, table: np.ndarray, catalog: pd.DataFrame | None = None):
    """The trained model (a saved model folder, loaded fresh, or a model object, changed in place)
    with ``table`` as its item table: :func:`gtcrec.model.swap_item_table`, no retraining. With
    ``catalog`` (the new talks, in table order), a model whose item representation reads catalog
    fields (track, day, ...) gets the new talks' values."""
    from gtcrec import model as gm
    from gtcrec.representation import ItemRepresentation, catalog_fields

    if isinstance(model, (str, os.PathLike)):
        model = gm.load_model(model)
    rep = gm.item_embedding(model)
    fields = None
    if catalog is not None and isinstance(rep, ItemRepresentation):
        fields = catalog_fields(catalog, rep.field_names)
    gm.swap_item_table(model, table, fields=fields)
    return model.eval()


def example_sessions(n_codes: int, max_len: int, n: int = 48, seed: int = 0) -> list[np.ndarray]:
    """Ragged code sessions over ``3 .. n_codes-1`` (lengths 1..max_len, one of each extreme), for
    tracing and checking a model over a catalog of ``n_codes - 3`` talks."""
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([[1, max_len], rng.integers(1, max_len + 1, size=max(n - 2, 0))])
    return [rng.integers(N_RESERVED, n_codes, size=int(m)).astype(np.int64) for m in lengths]


def trace_swapped(model, k: int, seed: int = 0):
    """Trace ``model`` to return its top ``k`` codes (:func:`gtcrec.model.trace_topk`) and check the
    trace against the eager model on other sessions; returns ``(traced, check)``. Both batches are
    padded to ``max_len`` as the serving graph pads them."""
    from gtcrec import model as gm

    n = gm.n_codes(model)
    max_len = int(model.max_sequence_length)

    def batch(s):
        return gm.sessions_to_batch(example_sessions(n, max_len, seed=s), max_len, pad=True)

    traced = gm.trace_topk(model, batch(seed), k=k)
    check = gm.check_traced(traced, model, batch(seed + 1))
    return traced, check


# ----------------------------------------------------------------------------------------------
# Loading a version into the running server
# ----------------------------------------------------------------------------------------------

@dataclass
class LoadResult:
    version: int
    seconds: float
    started: float  # time.perf_counter() when the load request was sent
    ended: float  # ... and when the server answered
    serving: list[int]


def load_version(url, repository, version: int, model_name: str = DEFAULT_MODEL_NAME,
                 restore_config: str | None = None, timeout: float = 300.0, action: str = "load") -> LoadResult:
    """Ask the server to load ``model_name`` now that ``version`` is the newest folder (gRPC
    ``load_model``; Triton serves the old version until the new one is ready).

    On failure the version folder goes to the archive, ``config.pbtxt`` is set back to
    ``restore_config`` (when given) and :class:`SwapError` is raised with the server's message and
    the versions still serving."""
    from tritonclient.utils import InferenceServerException

    client = _grpc_client(url)
    error = None
    started = time.perf_counter()
    try:
        client.load_model(model_name, client_timeout=timeout)
    except InferenceServerException as exc:
        error = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    finally:
        ended = time.perf_counter()
        client.close()
    serving = serving_versions(url, model_name)
    if error is None and version not in serving:
        error = f"the server reports versions {serving} ready, not {version}"
    if error is None:
        return LoadResult(int(version), ended - started, started, ended, serving)
    folder = Path(repository) / model_name
    archived = archive_version(repository, version, "failed", model_name) if (folder / str(version)).is_dir() else None
    if restore_config is not None:
        (folder / "config.pbtxt").write_text(restore_config)
    _record(repository, model_name, action=f"{action}-failed", version=int(version), ok=False,
            error=error, serving=serving, archived=str(archived) if archived else None)
    raise SwapError(f"the server could not load {model_name} version {version}; still serving "
                    f"{serving or 'nothing'}; version {version} is archived"
                    f"{' as ' + archived.name if archived else ''} (the server's index lists it as UNAVAILABLE "
                    f"until the model is unloaded: see gtcrec-swap --status). Server said: {error}",
                    version=int(version),
                    serving=serving, server_error=error)


# ----------------------------------------------------------------------------------------------
# The swap
# ----------------------------------------------------------------------------------------------

@dataclass
class SwapResult:
    """What a swap did and how long each step took (seconds)."""

    version: int
    previous_version: int | None
    model_name: str
    catalog: str
    n_talks: int
    newly_encoded: int
    k_model: int
    k: int
    steps: dict[str, float]
    load: LoadResult
    trace_check: dict
    serving: list[int]
    total_seconds: float  # catalog file -> new version serving, everything included
    seconds_without_encoding: float  # the same minus text encoding
    vocab: list[str] = field(repr=False, default_factory=list)
    old_vocab: list[str] = field(repr=False, default_factory=list)

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("vocab"), out.pop("old_vocab")
        out["load"] = {k: v for k, v in out["load"].items() if k not in ("started", "ended")}
        return out


def swap_catalog(catalog_file, model_repository, server_url, model_dir, cache_dir,
                 k_model: int | None = None, model_name: str = DEFAULT_MODEL_NAME,
                 timeout: float = 300.0, progress: bool = False, log: Log | None = None,
                 _before_load: Callable[[Path], None] | None = None) -> SwapResult:
    """Swap a new catalog into the served model: the whole path from a catalog file to a new
    version serving, with no retraining.

    1. read the serving version (server + ``model_repository``): its vocabulary and settings;
    2. validate ``catalog_file`` against it (:func:`validate_catalog`; nothing is changed on error);
    3. embed the talks (cache ``cache_dir``: only unseen texts are encoded), vocabulary, item table;
    4. load the trained model from ``model_dir`` (notebook 03's saved model) and swap its table;
    5. trace it to return the top ``k_model`` codes (default: the serving version's K) and check
       the trace against the eager model;
    6. export the ensemble as the next version (same serving settings as the version replaced);
    7. load it into the server at ``server_url`` (gRPC ``host:port``); see :func:`load_version`.

    Returns a :class:`SwapResult`. Raises :class:`DataValidationError` (bad catalog) or
    :class:`SwapError` (the server refused; old version still serving). ``_before_load`` (tests and
    demonstrations) is called with the new version folder just before the load."""
    from gtcrec.serving import export as ex

    log = log or _quiet
    t0 = time.perf_counter()
    steps: dict[str, float] = {}
    repo = Path(model_repository).resolve()
    folder = repo / model_name

    started = time.perf_counter()
    previous, how = current_version(server_url, repo, model_name)
    if previous is None:
        raise SwapError(f"{folder} has no version to take settings from")
    settings = read_version(repo, previous, model_name)
    k_model = int(k_model or settings.k_model or 0)
    if k_model < 1:
        raise ValueError("the serving version does not say how many candidates its model returns: pass k_model")
    steps["read_serving_version"] = time.perf_counter() - started
    log(f"serving version {previous} ({how}): {len(settings.vocab)} talks, k={settings.k}, K={k_model}")

    prepared = prepare_catalog(catalog_file, cache_dir, old_vocab=settings.vocab,
                               min_talks=max(k_model, settings.k), progress=progress)
    steps["validate_catalog"] = prepared.validate_seconds
    steps["encode_text"] = prepared.encode_seconds
    log(f"catalog {prepared.path.name}: {len(prepared.vocab)} talks valid; {prepared.newly_encoded} texts "
        f"encoded in {prepared.encode_seconds:.1f} s (the rest from the cache)")

    with repository_lock(repo, model_name):
        started = time.perf_counter()
        model = swapped_model(model_dir, prepared.table, prepared.catalog)
        steps["load_and_swap_model"] = time.perf_counter() - started

        started = time.perf_counter()
        traced, check = trace_swapped(model, k_model)
        steps["trace"] = time.perf_counter() - started
        log(f"model swapped to {len(prepared.vocab)} talks and traced (K={k_model}; trace == eager within "
            f"{check['max_score_diff']:.1e})")

        version = next_version(repo, model_name)
        config_before = (folder / "config.pbtxt").read_text()
        _remember_config(repo, model_name, previous, config_before)
        started = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="gtcrec-swap-") as tmp:
                traced_path = Path(tmp) / "model_topk.pt"
                traced.save(str(traced_path))
                ex.export_ensemble(prepared.vocab, traced_path, repo, name=model_name, version=version,
                                   popularity=None, **settings.export_kwargs())
        except BaseException:
            if (folder / str(version)).is_dir():
                shutil.rmtree(folder / str(version))
            (folder / "config.pbtxt").write_text(config_before)
            raise
        steps["export"] = time.perf_counter() - started
        _remember_config(repo, model_name, version)
        log(f"exported version {version} in {steps['export']:.1f} s; loading it into {grpc_target(server_url)}")

        if _before_load is not None:
            _before_load(folder / str(version))
        load = load_version(server_url, repo, version, model_name, restore_config=config_before,
                            timeout=timeout, action="swap")
        steps["server_load"] = load.seconds
    total = time.perf_counter() - t0
    _record(repo, model_name, action="swap", version=version, from_version=previous, ok=True,
            catalog=str(prepared.path), n_talks=len(prepared.vocab), first_ids=prepared.vocab[:3],
            newly_encoded=prepared.newly_encoded, seconds=round(total, 3),
            seconds_without_encoding=round(total - prepared.encode_seconds, 3))
    log(f"version {version} serving; file -> serving {total:.1f} s "
        f"({total - prepared.encode_seconds:.1f} s without text encoding)")
    return SwapResult(version=version, previous_version=previous, model_name=model_name,
                      catalog=str(prepared.path), n_talks=len(prepared.vocab),
                      newly_encoded=prepared.newly_encoded, k_model=k_model, k=settings.k, steps=steps,
                      load=load, trace_check=check, serving=load.serving, total_seconds=total,
                      seconds_without_encoding=total - prepared.encode_seconds, vocab=prepared.vocab,
                      old_vocab=settings.vocab)


@dataclass
class RollbackResult:
    from_version: int
    to_version: int
    archived: str
    load: LoadResult


def rollback(server_url, model_repository, model_name: str = DEFAULT_MODEL_NAME, timeout: float = 300.0,
             log: Log | None = None) -> RollbackResult:
    """Return to the previous version: the serving version's folder goes to the archive, the
    previous version's ``config.pbtxt`` comes back, and the server loads the highest version left
    (Triton keeps answering with the current version until then). Raises :class:`SwapError` when
    there is no earlier version or the server refuses it (the current version then stays)."""
    log = log or _quiet
    repo = Path(model_repository).resolve()
    folder = repo / model_name
    with repository_lock(repo, model_name):
        serving = serving_versions(server_url, model_name)
        if not serving:
            raise SwapError(f"the server serves no version of {model_name}: nothing to roll back")
        current = serving[-1]
        earlier = [v for v in repository_versions(repo, model_name) if v < current]
        if not earlier:
            raise SwapError(f"{model_name} version {current} is the oldest in {folder}: nothing to return to",
                            version=current, serving=serving)
        target = earlier[-1]
        newer = [v for v in repository_versions(repo, model_name) if v >= current]
        config_now = (folder / "config.pbtxt").read_text()
        _remember_config(repo, model_name, current, config_now)
        target_config = read_history(repo, model_name)["configs"].get(str(target))
        moved = {v: archive_version(repo, v, "retired", model_name) for v in newer}
        if target_config is not None:
            (folder / "config.pbtxt").write_text(target_config)
        log(f"rolling back {model_name} from version {current} to {target}")
        try:
            load = load_version(server_url, repo, target, model_name, timeout=timeout, action="rollback")
        except SwapError:
            # the target refused to load and went to the archive: bring the current version back
            for v, path in moved.items():
                os.replace(path, folder / str(v))
            (folder / "config.pbtxt").write_text(config_now)
            raise
        _record(repo, model_name, action="rollback", version=target, from_version=current, ok=True,
                seconds=round(load.seconds, 3), archived=[str(p) for p in moved.values()])
    log(f"version {target} serving again ({load.seconds:.1f} s)")
    return RollbackResult(current, target, str(moved[current]), load)


REFUSED_STAYS_LISTED = (
    "Triton lists every version it ever tried to load until the whole model is unloaded or the server "
    "restarts, and it can only unload a model with all its versions (the served one too: an outage), so the "
    "refused version stays in its index as UNAVAILABLE. It is archived: never served again, its number never "
    "reused.")


def version_table(index: Sequence[dict], repository, model_name: str = DEFAULT_MODEL_NAME) -> list[dict]:
    """Every version the server lists or the model folder holds (kept or archived), one row each:
    ``version``, ``server`` (state or "not listed"), ``reason``, ``folder`` ("kept", an archive folder
    name, or "missing"), ``meaning`` and ``agrees`` (the server and the folder tell the same story)."""
    folder = Path(repository) / model_name
    kept = set(repository_versions(repository, model_name))
    archive: dict[int, list[str]] = {}
    if (folder / ARCHIVE).is_dir():
        for p in sorted((folder / ARCHIVE).iterdir()):
            head = p.name.split("-")[0]
            if head.isdigit():
                archive.setdefault(int(head), []).append(p.name)
    on_server = {int(m["version"]): m for m in index if m.get("name") == model_name and m.get("version")}
    serving = max((v for v, m in on_server.items() if m.get("state") == "READY"), default=None)
    rows = []
    for v in sorted(kept | set(archive) | set(on_server)):
        entry = on_server.get(v, {})
        state = entry.get("state", "not listed")
        reason = entry.get("reason", "")
        where = "kept" if v in kept else (archive[v][-1] if v in archive else "missing")
        failed = where != "kept" and "-failed-" in where
        if state == "READY":
            agrees, meaning = v in kept, ("served" if v in kept else
                                          "served, but its folder is gone: a load would drop it")
        elif state == "UNLOADING":
            agrees, meaning = True, "being unloaded (replaced by the served version)"
        elif state == "LOADING":
            agrees, meaning = False, "loading (a swap or rollback is under way)"
        elif v in kept:
            newer = serving is None or v > serving
            agrees = not newer
            meaning = ("not loaded, newer than the served version: a load would serve it" if newer
                       else "kept for a rollback (not loaded)")
        elif failed:
            agrees = True
            meaning = ("refused by the server and archived; listed by Triton until the model is unloaded or the "
                       "server restarts" if state != "not listed" else "refused by the server and archived")
        elif where != "missing":
            agrees, meaning = True, "archived (rolled back or retired); not loaded"
        else:
            agrees, meaning = state != "READY", "known to the server only (no folder)"
        rows.append({"version": v, "server": state, "reason": reason.strip().splitlines()[0][:200] if reason else "",
                     "folder": where, "meaning": meaning, "agrees": bool(agrees)})
    return rows


def status(server_url, model_repository, model_name: str = DEFAULT_MODEL_NAME) -> dict:
    """Versions in the repository, in the archive, on the server, and the last history events.

    ``versions`` (:func:`version_table`) puts the server's index and the model folder side by side,
    one row per version; ``agree`` is True when every row agrees. A version the server refused stays
    in Triton's index as UNAVAILABLE after the swap archived it (``notes`` says why: Triton cannot
    unload one version of a model); its row reads "refused by the server and archived"."""
    repo = Path(model_repository).resolve()
    folder = repo / model_name
    archived = sorted(p.name for p in (folder / ARCHIVE).iterdir()) if (folder / ARCHIVE).is_dir() else []
    index = server_index(server_url, model_name)
    versions = version_table(index, repo, model_name)
    notes = []
    if any(r["folder"].split("-")[1:2] == ["failed"] and r["server"] not in ("not listed", "READY") for r in versions):
        notes.append(REFUSED_STAYS_LISTED)
    return {"model": model_name, "repository": str(repo),
            "repository_versions": repository_versions(repo, model_name), "archived": archived,
            "server": index, "serving": sorted(int(m["version"]) for m in index if m.get("state") == "READY"),
            "versions": versions, "agree": all(r["agrees"] for r in versions), "notes": notes,
            "history": read_history(repo, model_name)["events"][-10:]}


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


# ----------------------------------------------------------------------------------------------
# Quality on the new event
# ----------------------------------------------------------------------------------------------

def transfer_scores(old_scores: np.ndarray, old_vocab: Sequence[str], new_vocab: Sequence[str],
                    unseen: float = 0.0) -> np.ndarray:
    """Scores over the old codes -> scores over the new codes, matching talks by id. A talk the old
    event never had gets ``unseen`` (for count-based scores: no clicks); reserved codes ``-inf``."""
    old_pos = {t: i + N_RESERVED for i, t in enumerate(old_vocab)}
    cols = np.array([old_pos.get(t, -1) for t in new_vocab], dtype=np.int64)
    out = np.full((old_scores.shape[0], len(new_vocab) + N_RESERVED), -np.inf, dtype=np.float32)
    known = cols >= 0
    out[:, N_RESERVED:][:, ~known] = unseen
    if known.any():
        out[:, N_RESERVED + np.flatnonzero(known)] = old_scores[:, cols[known]]
    return out


def translate_prefixes(prefixes: Sequence[np.ndarray], from_vocab: Sequence[str], to_vocab: Sequence[str]
                       ) -> list[np.ndarray]:
    """Code sessions of one vocabulary in another's codes, by talk id (unknown talks -> 2, OOV)."""
    to_code = {t: i + N_RESERVED for i, t in enumerate(to_vocab)}
    from_ids = np.array([""] * N_RESERVED + list(from_vocab), dtype=object)
    return [np.array([to_code.get(t, etl.OOV) for t in from_ids[p]], dtype=np.int64) for p in prefixes]


@dataclass
class Quality:
    """Every method on the new event's test sessions (the last click given the clicks before it,
    clicked talks excluded)."""

    results: dict[str, dict]
    ratios: dict[str, float | None]
    notes: dict[str, str]
    counts: dict
    retrain: dict

    def table(self, columns: Sequence[str] = ("recall@10", "ndcg@10", "recall@20", "mrr@10")) -> pd.DataFrame:
        frame = pd.DataFrame(self.results).T
        frame = frame[[c for c in columns if c in frame.columns]]
        frame["what it knows"] = [self.notes.get(name, "") for name in frame.index]
        return frame


SWAPPED, RETRAINED = "swapped (zero-shot)", "retrained on the new event"


def evaluate_new_event(model_dir, new_catalog: pd.DataFrame, new_clicks: pd.DataFrame, new_table: np.ndarray,
                       old_train_sessions: Sequence[np.ndarray], old_vocab: Sequence[str], out_dir,
                       oracle_path=None, epochs: int = 5, batch_size: int = 256, lr: float = 1e-3,
                       seed: int = 42, ks: Sequence[int] = (10, 20), swapped=None,
                       log: Log | None = None) -> Quality:
    """Recall/NDCG@k of the swapped model and the references on the new event.

    The new event's clicks go through :func:`gtcrec.etl.run_etl` with the NEW vocabulary (catalog
    order, code = position + 3; time split), and every method is scored on its test split:

    * swapped (zero-shot): the trained model with the new table (``swapped`` or built from ``model_dir``);
    * retrained: the same architecture built with the new table and trained on the new event's
      training split (``epochs``): the upper bound of what the clicks of the new event can teach;
    * untrained: the same architecture with the new table and no training at all;
    * popularity and item-kNN fitted on the OLD event (``old_train_sessions`` in old codes): they know
      talks only by id, and no new talk was seen, so every new talk gets the same score (~random);
    * popularity and item-kNN fitted on the new event's training split, and random, for reference;
    * the oracle (``oracle_path``, the generator's exact next-click probabilities): the ceiling.
    """
    from gtcrec import baselines, metrics
    from gtcrec import model as gm
    from gtcrec.representation import settings_for

    log = log or _quiet
    out_dir = Path(out_dir).resolve()
    ks = tuple(ks)
    trained = gm.load_model(model_dir)
    cfg = gm.describe(trained)
    max_len = cfg["max_len"]
    new_vocab = etl.vocabulary(new_catalog).tolist()
    n_codes = len(new_vocab) + N_RESERVED
    if new_table.shape[0] != n_codes:
        raise ValueError(f"the table has {new_table.shape[0]} rows, the catalog needs {n_codes}")

    started = time.perf_counter()
    result = etl.run_etl(new_clicks, new_catalog, out_dir / "etl", max_len=max_len)
    etl_seconds = time.perf_counter() - started
    train_sessions = metrics.read_sessions(result.split_dirs["train"])
    prefixes, targets = metrics.sessions_to_prefixes(metrics.read_sessions(result.split_dirs["test"]))
    log(f"new event through the ETL in {etl_seconds:.1f} s: {len(train_sessions)} training sessions, "
        f"{len(prefixes)} test sessions")

    def evaluate(scores):
        return metrics.evaluate_scores(scores, targets, ks=ks, exclude=prefixes)

    results, notes = {}, {}
    if swapped is None:
        swapped = swapped_model(model_dir, new_table, new_catalog)
    results[SWAPPED] = evaluate(gm.score_sessions(swapped, prefixes))
    notes[SWAPPED] = "old event's clicks + new talks' text"

    schema = gm.load_schema(result.split_dirs["train"])
    arch = {k: cfg[k] for k in ("arch", "masking", "d_model", "n_layer", "n_head", "dropout") if k in cfg}
    rep = cfg.get("item_repr")
    untrained = gm.build_model(schema, new_table, max_len=max_len, seed=seed,
                               item_repr=settings_for(rep, new_catalog), **arch)
    results["untrained, new table"] = evaluate(gm.score_sessions(untrained, prefixes))
    notes["untrained, new table"] = "new talks' text only"

    warm = np.bincount(np.concatenate(train_sessions), minlength=n_codes) > 0
    warm[:N_RESERVED] = False
    retrained = gm.build_model(schema, new_table, max_len=max_len, seed=seed,
                               item_repr=settings_for(rep, new_catalog, warm), **arch)
    history = gm.train(retrained, result.split_dirs["train"], result.split_dirs["valid"], epochs=epochs,
                       batch_size=batch_size, lr=lr, seed=seed, output_dir=out_dir / "t4r-retrained")
    results[RETRAINED] = evaluate(gm.score_sessions(retrained, prefixes))
    notes[RETRAINED] = "new event's clicks + new talks' text (upper bound)"
    log(f"retrained on the new event in {history['seconds']:.0f} s ({epochs} epochs)")

    old_train = [np.asarray(s, dtype=np.int64) for s in old_train_sessions]
    old_prefixes = translate_prefixes(prefixes, new_vocab, old_vocab)
    n_old_codes = len(old_vocab) + N_RESERVED
    for name, baseline in (("popularity (old event)", baselines.PopularityBaseline(n_old_codes)),
                           ("item-kNN (old event)", baselines.ItemKNNBaseline(n_old_codes))):
        baseline.fit(old_train)
        results[name] = evaluate(transfer_scores(baseline.scores(old_prefixes), old_vocab, new_vocab))
        notes[name] = "old event's clicks; never saw a new talk: ~random"
    for name, baseline in baselines.text_baselines(new_table).items():
        results[name] = evaluate(baseline.scores(prefixes))
        notes[name] = "new talks' text only, no training"
    for name, baseline in (("popularity (new event)", baselines.PopularityBaseline(n_codes)),
                           ("item-kNN (new event)", baselines.ItemKNNBaseline(n_codes)),
                           ("random", baselines.RandomBaseline(n_codes, seed=seed))):
        baseline.fit(train_sessions)
        results[name] = evaluate(baseline.scores(prefixes))
        notes[name] = "nothing" if name == "random" else "new event's clicks (reference)"
    if oracle_path is not None:
        oracle = gdata.Oracle.load(oracle_path, new_catalog)
        ids = np.array(new_vocab, dtype=object)
        scores = np.full((len(prefixes), n_codes), -np.inf, dtype=np.float64)
        scores[:, N_RESERVED:] = oracle.scores([list(ids[p - N_RESERVED]) for p in prefixes])
        results["oracle"] = evaluate(scores)
        notes["oracle"] = "the generator's exact probabilities (ceiling)"

    def ratio(a, b, metric):
        den = results.get(b, {}).get(metric)
        return None if not den else float(results[a][metric] / den)

    ratios = {}
    for metric in ("recall@10", "ndcg@10"):
        ratios[f"swapped_over_retrained_{metric}"] = ratio(SWAPPED, RETRAINED, metric)
        ratios[f"swapped_over_oracle_{metric}"] = ratio(SWAPPED, "oracle", metric)
        ratios[f"swapped_over_untrained_{metric}"] = ratio(SWAPPED, "untrained, new table", metric)
        ratios[f"swapped_over_old_popularity_{metric}"] = ratio(SWAPPED, "popularity (old event)", metric)
        ratios[f"swapped_over_random_{metric}"] = ratio(SWAPPED, "random", metric)
        best_text = max(baselines.text_baselines(new_table), key=lambda name: results[name][metric])
        ratios[f"swapped_over_best_text_{metric}"] = ratio(SWAPPED, best_text, metric)
    counts = {**result.counts, "test_sessions": len(prefixes), "train_sessions": len(train_sessions),
              "n_talks": len(new_vocab)}
    retrain = {"epochs": epochs, "seconds": history["seconds"], "steps": history["steps"],
               "final_loss": history["train"][-1]["loss"] if history["train"] else None,
               "etl_seconds": etl_seconds}
    return Quality(results=results, ratios=ratios, notes=notes, counts=counts, retrain=retrain)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gtcrec-swap",
        description="Swap a new event's catalog into the served session model (no retraining) and hot-load "
                    "it into a running Triton server as the next model version; or roll back.",
        epilog="Exit status: 0 done; 2 bad arguments or invalid catalog (nothing changed); 1 the server refused "
               "the new version or the rollback (the serving version is unchanged).")
    parser.add_argument("catalog", nargs="?", help="the new catalog file (CSV or parquet, the catalog format)")
    parser.add_argument("--repository", required=True, help="the Triton model repository the server reads")
    parser.add_argument("--url", required=True, help="the server's gRPC address, host:port")
    parser.add_argument("--model-dir", help="the trained model saved by notebook 03 (artifacts/03-train/model)")
    parser.add_argument("--cache", default="data/cache/embeddings", help="text-embedding cache folder "
                        "(default: %(default)s)")
    parser.add_argument("--k", type=int, default=None, help="candidates the traced model returns "
                        "(default: the same as the serving version)")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="default: %(default)s")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the server's load")
    parser.add_argument("--json", help="also write the result as JSON to this file ('-': stdout)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--rollback", action="store_true", help="return to the previous version")
    action.add_argument("--status", action="store_true", help="show versions served, kept and archived")
    return parser


def _emit(result: dict, target: str | None) -> None:
    if not target:
        return
    text = json.dumps(result, indent=2, default=str)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*Tensorflow dtype mappings.*")
    parser = _parser()
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[gtcrec-swap] {msg}", file=sys.stderr, flush=True)

    try:
        if args.status:
            result = status(args.url, args.repository, args.model_name)
            log(f"serving {result['serving']}; in the repository {result['repository_versions']}; "
                f"archived {result['archived']}")
            for row in result["versions"]:
                log(f"  version {row['version']}: server {row['server']}, folder {row['folder']}: {row['meaning']}"
                    + ("" if row["agrees"] else "  <- does not agree"))
            for note in result["notes"]:
                log(note)
            _emit(result, args.json or "-")
            return 0
        if args.rollback:
            rb = rollback(args.url, args.repository, args.model_name, timeout=args.timeout, log=log)
            _emit({"action": "rollback", **asdict(rb)}, args.json)
            return 0
        if not args.catalog or not args.model_dir:
            parser.error("a swap needs the new catalog file and --model-dir (or use --rollback / --status)")
        res = swap_catalog(args.catalog, args.repository, args.url, args.model_dir, args.cache, k_model=args.k,
                           model_name=args.model_name, timeout=args.timeout, log=log)
        _emit({"action": "swap", **res.summary()}, args.json)
        return 0
    except DataValidationError as exc:
        print(f"gtcrec-swap: invalid catalog, nothing changed:\n{exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"gtcrec-swap: {exc}", file=sys.stderr)
        return 2
    except SwapError as exc:
        print(f"gtcrec-swap: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
