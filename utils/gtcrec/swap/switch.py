"""Switching the served version: loading a version into the running server, the swap itself
(:func:`swap_catalog`), rollback and status."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from gtcrec.serving import access
from gtcrec.serving.repository import (ARCHIVE, DEFAULT_MODEL_NAME, Log, SwapError, _grpc_client, _quiet,
                                       _remember_config, archive_version, current_version, grpc_target,
                                       next_version, version_config, read_history, read_version, record_event,
                                       repository_lock, repository_versions, server_index, serving_versions)
from gtcrec.swap.catalog import prepare_catalog, swapped_model, trace_swapped


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
    the versions still serving (none when the server does not answer: a replica killed during the load
    refuses the version like one whose load fails)."""
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
    try:
        serving = serving_versions(url, model_name)
    except access.ControlKeyError:
        raise
    except Exception as exc:  # the server died or cannot be reached: it refused the version too
        serving = []
        error = f"{error + '; ' if error else ''}the server does not answer: {str(exc)[:300]}"
    if error is None and version not in serving:
        error = f"the server reports versions {serving} ready, not {version}"
    if error is None:
        return LoadResult(int(version), ended - started, started, ended, serving)
    raise refuse_version(repository, version, error, serving, model_name, restore_config, action)


def refuse_version(repository, version: int, error: str, serving: Sequence[int],
                   model_name: str = DEFAULT_MODEL_NAME, restore_config: str | None = None,
                   action: str = "load") -> SwapError:
    """What follows a load the server refused: the version folder goes to the archive, ``config.pbtxt``
    is set back to ``restore_config`` (when given), the failure is recorded in the history, and the
    :class:`SwapError` to raise is returned (naming the server's message and the versions still
    ``serving``)."""
    folder = Path(repository) / model_name
    archived = archive_version(repository, version, "failed", model_name) if (folder / str(version)).is_dir() else None
    if restore_config is not None:
        (folder / "config.pbtxt").write_text(restore_config)
    record_event(repository, model_name, action=f"{action}-failed", version=int(version), ok=False,
                 error=error, serving=list(serving), archived=str(archived) if archived else None)
    return SwapError(f"the server could not load {model_name} version {version}; still serving "
                     f"{list(serving) or 'nothing'}; version {version} is archived"
                     f"{' as ' + archived.name if archived else ''} (the server's index lists it as UNAVAILABLE "
                     f"until the model is unloaded: see gtcrec-swap --status). Server said: {error}",
                     version=int(version), serving=list(serving), server_error=error)


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


@dataclass
class Published:
    version: int
    load: LoadResult
    trace_check: dict
    steps: dict


def publish(model, vocab: Sequence[str], repository, server_url, previous: int, settings, k_model: int,
            model_name: str = DEFAULT_MODEL_NAME, popularity: Sequence[float] | None = None,
            timeout: float = 300.0, action: str = "swap", log: Log | None = None,
            _before_load: Callable[[Path], None] | None = None) -> Published:
    """Serve an eager ``model`` over the talks ``vocab`` as the next version: trace it to its top
    ``k_model`` codes (checked against the eager model), export the ensemble with the serving settings
    of version ``previous`` (``settings``, :func:`read_version`; ``popularity``: the fallback ranking,
    ``None`` catalog order), and load it (:func:`load_version`: a refused version is archived and the old
    one keeps serving). Call it holding :func:`repository_lock`. Used by the catalog swap and by the
    live event's adaptation (:mod:`gtcrec.live`)."""
    log = log or _quiet
    repo = Path(repository)
    folder = repo / model_name
    steps: dict[str, float] = {}
    started = time.perf_counter()
    traced, check = trace_swapped(model, k_model, query=settings.index is not None)
    index = None
    if settings.index is not None:  # the retrieval path: a new index of the same kind over the new items
        from gtcrec.serving import retrieval

        index = retrieval.build_like(retrieval.item_vectors(model), settings.index)
    steps["trace"] = time.perf_counter() - started
    what = "session encoder and item index" if index is not None else f"model (K={k_model})"
    log(f"{what} over {len(vocab)} talks traced (trace == eager within {check['max_score_diff']:.1e})")

    started = time.perf_counter()
    version = export_version(traced, vocab, repo, previous, settings, model_name, popularity, index=index)
    steps["export"] = time.perf_counter() - started
    log(f"exported version {version} in {steps['export']:.1f} s; loading it into {grpc_target(server_url)}")
    if _before_load is not None:
        _before_load(folder / str(version))
    load = load_version(server_url, repo, version, model_name, timeout=timeout, action=action,
                        restore_config=version_config(repo, previous, model_name))
    steps["server_load"] = load.seconds
    return Published(version, load, check, steps)


def export_version(traced, vocab: Sequence[str], repository, previous: int, settings,
                   model_name: str = DEFAULT_MODEL_NAME, popularity: Sequence[float] | None = None,
                   index=None) -> int:
    """Export notebook 05's ensemble around ``traced`` (a top-K trace, :func:`trace_swapped`) over the
    talks ``vocab`` as the next version of ``model_name``, with the serving settings of version
    ``previous`` (``settings``, :func:`read_version`; ``popularity``: the fallback ranking, ``None``
    catalog order). Both versions' ``config.pbtxt`` are kept in the history (a rollback puts the old
    one back); an export that fails leaves the repository as it was. Nothing is loaded. Call it
    holding :func:`repository_lock`. Returns the new version number. ``index``: the retrieval path
    (``traced`` is then the session encoder and ``index`` the Faiss index of the new items)."""
    from gtcrec.serving import export as ex

    repo = Path(repository)
    folder = repo / model_name
    version = next_version(repo, model_name)
    config_before = (folder / "config.pbtxt").read_text()
    _remember_config(repo, model_name, previous, config_before)
    try:
        with tempfile.TemporaryDirectory(prefix="gtcrec-swap-") as tmp:
            traced_path = Path(tmp) / "model_topk.pt"
            traced.save(str(traced_path))
            ex.export_ensemble(list(vocab), traced_path, repo, name=model_name, version=version,
                               popularity=None if popularity is None else list(popularity), index=index,
                               **settings.export_kwargs())  # the index object: written once, into the version
    except BaseException:
        if (folder / str(version)).is_dir():
            shutil.rmtree(folder / str(version))
        (folder / "config.pbtxt").write_text(config_before)
        raise
    _remember_config(repo, model_name, version)
    return version


def swap_catalog(catalog_file, model_repository, server_url, model_dir, cache_dir,
                 k_model: int | None = None, model_name: str = DEFAULT_MODEL_NAME,
                 timeout: float = 300.0, progress: bool = False, log: Log | None = None,
                 _before_load: Callable[[Path], None] | None = None) -> SwapResult:
    """Swap a new catalog into the served model: the whole path from a catalog file to a new
    version serving, with no retraining.

    1. read the serving version (server + ``model_repository``): its vocabulary and settings;
    2. validate ``catalog_file`` against it (:func:`validate_catalog`; nothing is changed on error);
    3. embed the talks (cache ``cache_dir``: only unseen texts are encoded), vocabulary, item table;
    4. load the trained model from ``model_dir`` (notebook 04's saved model) and swap its table;
    5. trace it to return the top ``k_model`` codes (default: the serving version's K) and check
       the trace against the eager model;
    6. export the ensemble as the next version (same serving settings as the version replaced);
    7. load it into the server at ``server_url`` (gRPC ``host:port``); see :func:`load_version`.

    Returns a :class:`SwapResult`. Raises :class:`DataValidationError` (bad catalog) or
    :class:`SwapError` (the server refused; old version still serving). ``_before_load`` (tests and
    demonstrations) is called with the new version folder just before the load."""
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

        published = publish(model, prepared.vocab, repo, server_url, previous, settings, k_model, model_name,
                            popularity=None, timeout=timeout, action="swap", log=log, _before_load=_before_load)
        version, load, check = published.version, published.load, published.trace_check
        steps.update(published.steps)
    total = time.perf_counter() - t0
    record_event(repo, model_name, action="swap", version=version, from_version=previous, ok=True,
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
        target_config = version_config(repo, target, model_name)
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
        record_event(repo, model_name, action="rollback", version=target, from_version=current, ok=True,
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
