"""Event data: a seeded generator of GTC-like events, the exact next-click oracle, and file loading.

Three parts, used by notebook 00 and by everything that reads event data afterwards:

* **Generator.** :func:`generate_catalog` writes a catalog of talks (title, abstract, track, level,
  format, organisation, day, slot) whose text is composed from track- and subtopic-specific
  vocabulary, and gives every talk a unit latent vector ``z`` (track centre + subtopic centre +
  vectors of the key terms its text uses + noise, normalised) and a popularity. :func:`generate_sessions` draws attendee sessions from the latent click model
  described below. :func:`generate_events` builds the two events of the series ("spring", the
  training event, and "fall", a new event with a disjoint catalog) and :func:`write_event` writes
  ``catalog.parquet``, ``clicks.parquet`` and ``oracle.npz``.
* **Oracle.** :class:`Oracle` holds the generative parameters and returns the exact probability of
  every talk being the next click of a session prefix. It is the ceiling any recommender can
  reach on generated data.
* **Loading.** :func:`load_catalog` and :func:`load_clicks` read CSV or parquet files (generated
  or brought by a user) through the same validation; problems raise :class:`DataValidationError`
  naming the file, the row and the column.

Modules: ``words`` (word lists and templates, read from ``words.json``; talk text), ``latent`` (click-model
parameters, the world's geometry, a catalog's latent arrays), ``generator`` (catalog, sessions, the two
events, their files), ``oracle`` (:class:`Oracle`, :func:`session_prefixes`), ``formats`` (loading and
validation). Every public name is importable from ``gtcrec.data``.

Click model (the parameters live in :class:`ClickModel`)
-----------------------------------------------------------
First click of a session: the attendee has a sparse interest over tracks,
``theta ~ Dirichlet(interest_alpha)``; a track ``t`` is drawn from ``theta`` and then a talk of that
track with probability proportional to its popularity. Averaged over ``theta`` (what the oracle
returns for an empty prefix) this is ``P(j) = pop_j / (n_tracks * sum of pop over j's track)``.

Every later click depends on the prefix ``p`` (the talks clicked so far, last one ``l``) only::

    P(j | p)  ∝  exp( a * z_l . z_j
                      + b * log((count of j's track in p + s) / (len(p) + s * n_tracks))
                      + c * log pop_j
                      - d * |day_j - day_l| )        for j not in p (no repeats), 0 for j in p.

Session length is ``2 + Geometric`` (mean ``mean_length``, at most ``max_length`` clicks);
sessions start uniformly over a window of ``days`` days and clicks are 10-300 s apart.
"""
from gtcrec.data.formats import (CATALOG_COLUMNS, CATALOG_TEXT_COLUMNS, CLICK_COLUMNS,
                                 MAX_PROBLEMS, TALK_ID_ALIASES, DataValidationError, load_catalog, load_clicks)
from gtcrec.data.generator import (EVENT_SETTINGS, FORMAT_WEIGHTS, FORMATS, LEVEL_WEIGHTS, LEVELS, N_DAYS, SLOTS,
                                   EventData, Events, generate_catalog, generate_events, generate_sessions,
                                   subtopic_names, write_event)
from gtcrec.data.latent import ClickModel, Latent, WorldParams, world_centres
from gtcrec.data.oracle import Oracle, session_prefixes
from gtcrec.data.words import (ORG_HOME_TRACK, ORG_WEIGHTS, ORGANIZATIONS, SUBTOPICS, TERM_INDEX, TERMS, TRACKS,
                               WORDS, talk_text)

__all__ = [
    "CATALOG_COLUMNS", "CATALOG_TEXT_COLUMNS", "CLICK_COLUMNS", "MAX_PROBLEMS",
    "TALK_ID_ALIASES", "DataValidationError", "load_catalog", "load_clicks",
    "EVENT_SETTINGS", "FORMAT_WEIGHTS", "FORMATS", "LEVEL_WEIGHTS", "LEVELS", "N_DAYS", "SLOTS",
    "EventData", "Events", "generate_catalog", "generate_events", "generate_sessions", "subtopic_names",
    "write_event", "ClickModel", "Latent", "WorldParams", "world_centres", "Oracle", "session_prefixes",
    "ORG_HOME_TRACK", "ORG_WEIGHTS", "ORGANIZATIONS", "SUBTOPICS", "TERM_INDEX", "TERMS", "TRACKS", "WORDS",
    "talk_text",
]
