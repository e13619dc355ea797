"""A catalog update during the event: a new version of the catalog being served (talks added, cancelled,
retitled), served without losing what the live loop learned.

A swap (:func:`gtcrec.swap.switch.swap_catalog`) starts a new event: new talk ids, the trained model with
the new table, nothing learned yet. An update keeps the event: :func:`update_catalog`

1. reads the version served and validates the file as a new version of its catalog
   (:func:`gtcrec.swap.catalog.validate_catalog` with ``update=True``: the catalog file rules, and at
   least one talk id in common with the catalog served, else the file is a new event and a swap is the
   way);
2. embeds the whole file (the embedding cache answers unchanged texts; added talks and changed titles or
   abstracts are encoded);
3. takes the eager model of the version served (:func:`served_model`: the one the last adaptation cycle
   saved in ``<model>/live/<version>``, else the swapped or trained model it was exported from), gives it
   the new catalog's table and fields (:func:`gtcrec.model.swap_item_table`) and puts back, talk id by
   talk id, what the live loop learned per talk (:func:`carry_by_id`: the residual, the bias and the
   "warm" flag of every talk that stays, retitled ones included: their clicks are still theirs); added
   talks start from their text alone, as in a swap;
4. carries the fallback ranking (observed popularity) by talk id the same way (added talks: 0);
5. serves it as the next version through the swap's path (:func:`gtcrec.swap.switch.publish`: trace,
   export with the served version's settings, load under traffic, a refused version archived) and saves
   the eager model in ``<model>/live/<version>``, so that the next adaptation cycle's guard compares with
   what is served. Given a list of replicas (a fleet on one shared repository), it reads the version they
   all serve and publishes through the fleet swap's machinery (:func:`gtcrec.swap.fleet.publish_fleet`,
   under :func:`gtcrec.swap.fleet.fleet_lock`): every replica loads the updated version, or, if one
   refuses or stops answering, every replica serves the version before again.

Cancelled talks leave the vocabulary: they are never answered again, and a click on one is an unknown
talk to the served graph (dropped from the session; a session of only unknown talks gets the fallback
ranking), so a session that clicked one is still answered. ``gtcrec-swap --rollback`` returns to the
version before (the old catalog, with its learned parts); the next ``gtcrec-adapt`` cycle finds the
updated catalog through the history (:func:`gtcrec.serving.repository.catalog_event`) and learns from every
logged click on its talks, before the update too.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from gtcrec.layout import RESERVED
from gtcrec.serving.repository import (DEFAULT_MODEL_NAME, LIVE_MODELS, Log, SwapError, _quiet, catalog_event,
                                       current_version, read_version, record_event, repository_lock)

PER_TALK = ("residual", "item_bias", "warm")  # what the live loop learns per talk (gtcrec.live.adapt)


# ----------------------------------------------------------------------------------------------
# The pure parts: what changed, and per-talk rows carried by talk id
# ----------------------------------------------------------------------------------------------

@dataclass
class CatalogChanges:
    """Talk ids of a catalog update, each list in its catalog's order."""

    added: list[str]
    cancelled: list[str]
    changed_text: list[str]  # in both catalogs, with another text (title, abstract, ...): encoded again
    kept: list[str]  # in both catalogs (changed_text included): what was learned for them is kept

    def summary(self) -> dict:
        return {"added": len(self.added), "cancelled": len(self.cancelled), "changed_text": len(self.changed_text),
                "kept": len(self.kept)}


def catalog_changes(old_vocab: Sequence[str], new_vocab: Sequence[str], old_rows: np.ndarray,
                    new_rows: np.ndarray, atol: float = 1e-6) -> CatalogChanges:
    """What an update changes: ``old_rows`` / ``new_rows`` are the text vectors of ``old_vocab`` /
    ``new_vocab`` (one row per talk, catalog order): a talk in both whose vector differs had its text changed."""
    old_at = {str(t): i for i, t in enumerate(old_vocab)}
    new_ids = {str(t) for t in new_vocab}
    kept = [str(t) for t in new_vocab if str(t) in old_at]
    changed = [t for i, t in enumerate(map(str, new_vocab))
               if t in old_at and not np.allclose(old_rows[old_at[t]], new_rows[i], atol=atol)]
    return CatalogChanges(added=[str(t) for t in new_vocab if str(t) not in old_at],
                          cancelled=[str(t) for t in old_vocab if str(t) not in new_ids],
                          changed_text=changed, kept=kept)


def carry_by_id(rows: np.ndarray, old_vocab: Sequence[str], new_vocab: Sequence[str],
                reserved: int = RESERVED) -> np.ndarray:
    """Per-code rows of the old catalog (``len(old_vocab) + reserved`` rows, reserved codes first) moved to
    the codes of the new one by talk id: a talk that stays keeps its row exactly, an added talk gets zeros,
    a cancelled talk's row is dropped; the reserved rows stay."""
    rows = np.asarray(rows)
    if len(rows) != len(old_vocab) + reserved:
        raise ValueError(f"{len(rows)} rows for {len(old_vocab)} talks and {reserved} reserved codes")
    out = np.zeros((len(new_vocab) + reserved, *rows.shape[1:]), dtype=rows.dtype)
    out[:reserved] = rows[:reserved]
    old_at = {str(t): i for i, t in enumerate(old_vocab)}
    pairs = [(reserved + j, reserved + old_at[str(t)]) for j, t in enumerate(new_vocab) if str(t) in old_at]
    if pairs:
        new_codes, old_codes = map(list, zip(*pairs))
        out[new_codes] = rows[old_codes]
    return out


def per_talk_parts(model) -> dict[str, np.ndarray]:
    """The per-talk parts of ``model``'s item representation (:data:`PER_TALK`, those it has), as arrays;
    ``{}`` for T4R's plain table."""
    from gtcrec import model as gm
    from gtcrec.representation import ItemRepresentation

    rep = gm.item_embedding(model)
    if not isinstance(rep, ItemRepresentation):
        return {}
    return {name: getattr(rep, name).detach().cpu().numpy().copy() for name in PER_TALK
            if getattr(rep, name, None) is not None}


def updated_model(served, table: np.ndarray, catalog, old_vocab: Sequence[str], new_vocab: Sequence[str]):
    """A copy of the eager ``served`` model over the updated catalog: its text rows and fields are
    ``table`` and ``catalog``'s (:func:`gtcrec.model.swap_item_table`), and every talk that stays keeps
    its residual, bias and warm flag (:func:`carry_by_id`); everything else is the served model's."""
    import torch

    from gtcrec import model as gm
    from gtcrec.representation import ItemRepresentation, catalog_fields

    model = copy.deepcopy(served)
    learned = per_talk_parts(model)
    rep = gm.item_embedding(model)
    fields = catalog_fields(catalog, rep.field_names) if isinstance(rep, ItemRepresentation) else None
    gm.swap_item_table(model, table, fields=fields)
    rep = gm.item_embedding(model)
    with torch.no_grad():
        for name, rows in learned.items():
            getattr(rep, name).copy_(torch.from_numpy(carry_by_id(rows, old_vocab, new_vocab)))
    if learned:
        rep._clear()
    return model.eval()


def served_model(repository, model_name: str, version: int, model_dir, cache_dir):
    """The eager model of ``version``: the one an adaptation cycle or update saved for it
    (``<model>/live/<version>``), else the trained model over the catalog of the swap that made it
    (:func:`gtcrec.serving.repository.catalog_event`; nothing learned yet), else the trained model (the trained
    catalog, with its trained per-talk parts)."""
    from gtcrec import model as gm
    from gtcrec.swap.catalog import prepare_catalog, swapped_model

    saved = Path(repository) / model_name / LIVE_MODELS / str(version)
    if saved.is_dir():
        return gm.load_model(saved).eval()
    event = catalog_event(repository, model_name, version)
    if event is None:
        return gm.load_model(model_dir).eval()
    prepared = prepare_catalog(event["catalog"], cache_dir)
    return swapped_model(model_dir, prepared.table, prepared.catalog)


# ----------------------------------------------------------------------------------------------
# The update
# ----------------------------------------------------------------------------------------------

@dataclass
class UpdateResult:
    version: int
    previous_version: int
    model_name: str
    catalog: str
    n_talks: int
    newly_encoded: int
    changes: CatalogChanges
    learned_talks: int  # talks that stay with a learned residual or bias (warm), carried over
    steps: dict[str, float]
    serving: list[int]
    total_seconds: float
    trace_check: dict = field(default_factory=dict)
    replicas: dict = field(default_factory=dict)  # a fleet's update: what every replica serves after it

    def summary(self) -> dict:
        out = asdict(self)
        out["changes"] = {**self.changes.summary(), **asdict(self.changes)}
        return out


def update_catalog(catalog_file, model_repository, server_url, model_dir, cache_dir,
                   model_name: str = DEFAULT_MODEL_NAME, timeout: float = 300.0, progress: bool = False,
                   log: Log | None = None) -> UpdateResult:
    """Serve a new version of the catalog being served, keeping what was learned for the talks that stay
    (module docstring). ``server_url``: one server, or a list of replicas serving ``model_repository``
    (a fleet: all switch or none does; ``UpdateResult.replicas`` holds what each serves after). Raises
    :class:`gtcrec.data.DataValidationError` (bad file, or no talk in common with the catalog served:
    nothing changed) or :class:`SwapError` (the server, or a replica, refused: the old version still
    serves, on every replica)."""
    from gtcrec import model as gm
    from gtcrec.swap.catalog import prepare_catalog
    from gtcrec.swap.fleet import common_version, fleet_lock, publish_fleet
    from gtcrec.swap.switch import publish

    log = log or _quiet
    t0 = time.perf_counter()
    repo = Path(model_repository).resolve()
    replicas = list(server_url) if isinstance(server_url, (list, tuple)) else None
    if replicas is not None:
        previous, how = common_version(replicas, model_name), f"on all {len(replicas)} replicas"
    else:
        previous, how = current_version(server_url, repo, model_name)
    if previous is None:
        raise SwapError(f"{repo / model_name} has no version to update")
    settings = read_version(repo, previous, model_name)
    k_model = int(settings.k_model or 0)
    if k_model < 1:
        raise ValueError("the serving version does not say how many candidates its model returns")
    log(f"serving version {previous} ({how}): {len(settings.vocab)} talks")
    prepared = prepare_catalog(catalog_file, cache_dir, old_vocab=settings.vocab,
                               min_talks=max(k_model, settings.k), progress=progress, update=True)
    steps = {"validate_catalog": prepared.validate_seconds, "encode_text": prepared.encode_seconds}

    with (fleet_lock(repo, model_name) if replicas is not None else contextlib.nullcontext()), \
            repository_lock(repo, model_name):
        if replicas is not None and common_version(replicas, model_name) != previous:
            raise SwapError(f"the fleet left version {previous} while the catalog was read: nothing updated; "
                            "run the update again")
        started = time.perf_counter()
        served = served_model(repo, model_name, previous, model_dir, cache_dir)
        if gm.n_codes(served) != len(settings.vocab) + RESERVED:
            raise SwapError(f"the model of version {previous} has {gm.n_codes(served) - RESERVED} talks, its "
                            f"vocabulary {len(settings.vocab)}: pass the model that version was made from")
        changes = catalog_changes(settings.vocab, prepared.vocab, gm.text_table(served).cpu().numpy()[RESERVED:],
                                  prepared.table[RESERVED:])
        model = updated_model(served, prepared.table, prepared.catalog, settings.vocab, prepared.vocab)
        warm = per_talk_parts(model).get("warm")
        learned = int(warm[RESERVED:].sum()) if warm is not None else 0
        popularity = (None if settings.popularity is None else
                      carry_by_id(np.asarray(settings.popularity), settings.vocab, prepared.vocab, reserved=0))
        steps["carry_over"] = time.perf_counter() - started
        log(f"{prepared.path.name}: {len(changes.added)} talks added, {len(changes.cancelled)} cancelled, "
            f"{len(changes.changed_text)} with a changed text ({prepared.newly_encoded} texts encoded); "
            f"{learned} of the {len(changes.kept)} talks that stay keep what was learned for them")
        fleet_done = None
        if replicas is not None:
            fleet_done = publish_fleet(model, prepared.vocab, repo, replicas, previous, settings, k_model,
                                       model_name, popularity=popularity, timeout=timeout, action="update", log=log)
            published = fleet_done.first
            steps["other_loads"] = sum(load.seconds for load in list(fleet_done.loads.values())[1:])
        else:
            published = publish(model, prepared.vocab, repo, server_url, previous, settings, k_model, model_name,
                                popularity=popularity, timeout=timeout, action="update", log=log)
        steps.update(published.steps)
        gm.save_model(model, repo / model_name / LIVE_MODELS / str(published.version))
    total = time.perf_counter() - t0
    record_event(repo, model_name, action="update", version=published.version, from_version=previous, ok=True,
                 catalog=str(prepared.path.resolve()), n_talks=len(prepared.vocab), added=changes.added,
                 cancelled=changes.cancelled, changed_text=changes.changed_text, learned_talks=learned,
                 newly_encoded=prepared.newly_encoded, seconds=round(total, 3),
                 **({"replicas": list(fleet_done.serving)} if fleet_done is not None else {}))
    log(f"version {published.version} serving the updated catalog{' on every replica' if replicas else ''} "
        f"({total:.1f} s)")
    return UpdateResult(version=published.version, previous_version=previous, model_name=model_name,
                        catalog=str(prepared.path), n_talks=len(prepared.vocab), newly_encoded=prepared.newly_encoded,
                        changes=changes, learned_talks=learned, steps=steps, serving=published.load.serving,
                        total_seconds=total, trace_check=published.trace_check,
                        replicas=dict(fleet_done.serving) if fleet_done is not None else {})
