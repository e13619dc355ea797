"""Catalog swap: a new event's talks in the trained model, hot-loaded into a running Triton server.

The trained model scores talks through ONE table of text embeddings (input lookup and weight-tied
output layer). A new event (new talks, no clicks yet) therefore needs no retraining: embed the new
catalog, build its vocabulary and item table, replace the table in the model
(:func:`gtcrec.model.swap_item_table`), trace, export the serving ensemble as the NEXT version of the
served model and ask the running Triton server (``--model-control-mode=explicit``) to load it over
gRPC. Triton keeps answering with the old version until the new one is ready, then switches, so the
swap costs no failed requests. :func:`swap_catalog` does all of it (the benchmark and the ``gtcrec-swap``
command call it); notebook 07 takes the same steps one cell at a time: :func:`swapped_model`,
:func:`trace_swapped`, :func:`export_version`, Triton's ``load_model``, and :func:`refuse_version` when
the server refuses.

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
    gtcrec-swap --update CATALOG --repository REPO --url HOST:GRPC_PORT --model-dir MODEL_DIR [--cache DIR]
    gtcrec-swap --rollback --repository REPO --url HOST:GRPC_PORT [--model-name NAME]
    gtcrec-swap --status --repository REPO --url HOST:GRPC_PORT [--model-name NAME]
    gtcrec-swap [NEW_CATALOG ...|--rollback|--status] --fleet --repository SHARED_REPO --url R0 --url R1 ...

``--fleet`` (:mod:`gtcrec.swap.fleet`) does the same over several replicas that share one repository,
behind a load balancer (:mod:`gtcrec.serving.balancer`): the version is exported once and loaded on
every replica in turn; if one refuses, the replicas already switched go back, so the fleet serves
one catalog before and after (all or nothing).

Exit status: 0 done; 2 bad arguments or an invalid catalog file (nothing changed); 1 the server
refused the new version or the rollback (the serving version is unchanged, see the message).

Modules, by job (every public name is importable from ``gtcrec.swap``):

* :mod:`gtcrec.serving.repository` (re-exported here): server and repository state (versions served and
  held, a version's settings), the history and lock of a model folder, archiving and copying versions;
* ``catalog``: the new catalog (validation, its item table) and the swapped, traced model;
* ``switch``: loading a version, :func:`swap_catalog`, :func:`rollback`, :func:`status`;
* ``traffic``: requests while the swap happens (:class:`Traffic`, :func:`traffic_summary`, the timeline plot);
* ``quality``: the swapped model measured on the new event (:func:`evaluate_new_event`): the new
  event's clicks through the NVTabular ETL with the new vocabulary, every method on the same time-split
  test sessions;
* ``update``: a new version of the catalog served, during the event (talks added, cancelled, retitled):
  :func:`update_catalog` keeps what the live loop learned for the talks that stay (``gtcrec-swap --update``);
* ``fleet``: N replicas behind HAProxy (:class:`Fleet`), :func:`swap_fleet` and :func:`rollback_fleet`;
  :func:`publish_fleet` (the live event's fleet cycle);
* ``cli``: the ``gtcrec-swap`` command (``python -m gtcrec.swap`` runs it too).
"""

from gtcrec.serving.repository import (DEFAULT_MODEL_NAME, HISTORY_FILE, LOCK_FILE, ARCHIVE, Log, SwapError,
                                       grpc_target, serving_versions, server_index, repository_versions,
                                       VersionSettings, read_version, current_version, read_history,
                                       version_config, record_event, repository_lock, archive_version, copy_version,
                                       next_version)
from gtcrec.swap.catalog import (validate_catalog, PreparedCatalog, prepare_catalog, swapped_model,
                                 example_sessions, trace_swapped)
from gtcrec.swap.switch import (LoadResult, load_version, refuse_version, export_version,
                                SwapResult, swap_catalog, RollbackResult, rollback, REFUSED_STAYS_LISTED,
                                version_table, status)
from gtcrec.swap.traffic import probe_request, answer_catalog, Traffic, traffic_summary, plot_timeline
from gtcrec.swap.quality import (transfer_scores, translate_prefixes, Quality, SWAPPED, RETRAINED,
                                 served_row, evaluate_new_event)
from gtcrec.swap.fleet import (FleetSwapError, FleetSwapResult, FleetRollbackResult, Fleet, fleet_serving,
                               fleet_status, swap_fleet, rollback_fleet, publish_fleet, replica_addresses)
from gtcrec.swap.update import (CatalogChanges, catalog_changes, carry_by_id, per_talk_parts, updated_model,
                                served_model, UpdateResult, update_catalog)
from gtcrec.swap.cli import main

__all__ = [
    "DEFAULT_MODEL_NAME",
    "HISTORY_FILE",
    "LOCK_FILE",
    "ARCHIVE",
    "Log",
    "SwapError",
    "grpc_target",
    "serving_versions",
    "server_index",
    "repository_versions",
    "VersionSettings",
    "read_version",
    "current_version",
    "read_history",
    "record_event",
    "repository_lock",
    "archive_version",
    "copy_version",
    "next_version",
    "validate_catalog",
    "PreparedCatalog",
    "prepare_catalog",
    "swapped_model",
    "example_sessions",
    "trace_swapped",
    "LoadResult",
    "load_version",
    "refuse_version",
    "export_version",
    "version_config",
    "SwapResult",
    "swap_catalog",
    "RollbackResult",
    "rollback",
    "REFUSED_STAYS_LISTED",
    "version_table",
    "status",
    "probe_request",
    "answer_catalog",
    "Traffic",
    "traffic_summary",
    "plot_timeline",
    "transfer_scores",
    "translate_prefixes",
    "Quality",
    "SWAPPED",
    "RETRAINED",
    "served_row",
    "evaluate_new_event",
    "FleetSwapError",
    "FleetSwapResult",
    "FleetRollbackResult",
    "Fleet",
    "fleet_serving",
    "fleet_status",
    "swap_fleet",
    "rollback_fleet",
    "CatalogChanges",
    "catalog_changes",
    "carry_by_id",
    "per_talk_parts",
    "updated_model",
    "served_model",
    "UpdateResult",
    "update_catalog",
    "publish_fleet",
    "replica_addresses",
    "main",
]
