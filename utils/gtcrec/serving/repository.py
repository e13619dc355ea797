"""Server and repository state of the catalog swap: the versions a server serves and a repository holds,
the settings a version is served with, the swap history and the lock of a model folder, archiving and
copying versions."""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import inspect
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from gtcrec.serving import access


DEFAULT_MODEL_NAME = "executor_model"
HISTORY_FILE = "gtcrec_swap_history.json"
LOCK_FILE = ".gtcrec_swap.lock"
ARCHIVE = "archive"  # inside the model folder; not a number, so Triton ignores it

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
    """A gRPC client for control calls: it sends the control key (the server object's own, else
    :func:`gtcrec.serving.access.read_key`)."""
    return access.control_client(grpc_target(url), access.key_of(url))


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
    index: dict | None = None  # the retrieval path: what its Faiss index is (operators.index_spec)
    popularity: list[float] | None = None  # the fallback ranking, one number per talk of vocab (None: catalog order)

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
    from gtcrec.serving.operators import TorchScriptTopK

    model_op = next((op for op in ops.values() if isinstance(op, TorchScriptTopK)), None)  # FaissTopK is one
    k_model = getattr(model_op, "k_model", None)
    config = _parse_config((folder / "config.pbtxt").read_text())
    instances = sum(g.count for g in config.instance_group) or None
    executor = config.parameters["executor"].string_value if "executor" in config.parameters else None
    batching = ((int(config.max_batch_size), int(config.dynamic_batching.max_queue_delay_microseconds))
                if config.max_batch_size > 0 and config.HasField("dynamic_batching") else None)
    backend = "python" if model_op is not None else "pytorch"
    return VersionSettings(version=int(version), vocab=list(sess.vocab), max_len=int(sess.max_len),
                           k=int(decode.k), k_model=None if k_model is None else int(k_model),
                           pad_sessions=bool(getattr(sess, "pad", False)),
                           max_clicks=getattr(sess, "max_clicks", None), instance_count=instances,
                           executor=executor, dynamic_batching=batching, backend=backend,
                           index=getattr(model_op, "index_spec", None),
                           popularity=None if getattr(decode, "popularity", None) is None
                           else [float(v) for v in decode.popularity])


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


def record_event(repository, model_name: str, **event) -> None:
    """Add an event (a swap, a failed load, a rollback, an adaptation) to the model folder's history."""
    history = read_history(repository, model_name)
    history["events"].append({"time": _now(), **event})
    _write_history(repository, model_name, history)


LIVE_MODELS = "live"  # <model>/live/<version>: eager models of adapted or updated versions (not a number: Triton
# ignores it); written by gtcrec.live.cycle and gtcrec.swap.update
CATALOG_ACTIONS = ("swap", "update")  # history events that put a catalog in place (gtcrec-swap, gtcrec-swap --update)


def catalog_event(repository, model_name: str, version: int) -> dict | None:
    """The swap or catalog update (history event) whose catalog ``version`` serves: the version's own
    event, or for an adapted version that of the version it adapted; ``None`` when neither made it (the
    trained catalog, exported by notebook 05)."""
    events = [e for e in read_history(repository, model_name)["events"] if e.get("ok")]
    seen = set()
    while version is not None and version not in seen:
        seen.add(version)
        made = next((e for e in reversed(events) if e.get("version") == version
                     and e.get("action") in (*CATALOG_ACTIONS, "adapt")), None)
        if made is None:
            return None
        if made["action"] in CATALOG_ACTIONS:
            return made
        version = made.get("from_version")
    return None


def _remember_config(repository, model_name: str, version: int, text: str | None = None) -> None:
    history = read_history(repository, model_name)
    if str(version) not in history["configs"]:
        if text is None:
            text = (Path(repository) / model_name / "config.pbtxt").read_text()
        history["configs"][str(version)] = text
        _write_history(repository, model_name, history)


def version_config(repository, version: int, model_name: str = DEFAULT_MODEL_NAME) -> str | None:
    """The ``config.pbtxt`` that served ``version`` (kept in the history when the next version was exported)."""
    return read_history(repository, model_name)["configs"].get(str(version))


@contextlib.contextmanager
def file_lock(path, error: Exception):
    """Exclusive, non-blocking lock on the file ``path`` for the time of the block; raises ``error`` if
    another process holds it."""
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise error from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def repository_lock(repository, model_name: str = DEFAULT_MODEL_NAME):
    """Exclusive lock on a model folder for the time of a swap or rollback (raises if taken)."""
    path = Path(repository) / model_name / LOCK_FILE
    return file_lock(path, SwapError(f"another swap or rollback holds {path}; try again when it is done"))


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
