"""Word lists and templates of the generated talk text, and the composition of one talk's text.

The lists live in ``words.json`` beside this module (package data): per track (:data:`WORDS`) its share of
the catalog, track-wide nouns, verbs (base form), metrics, challenges, and 4-6 subtopics of (nouns;
methods; application domains); organisations; title, abstract and audience templates. :func:`talk_text`
composes a title and an abstract from them. ``WORDS`` holds words, not talk ids (the "vocabulary" of the
rest of the package is the list of talk ids that gives the codes).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

WORDS_FILE = Path(__file__).with_name("words.json")
_LISTS = json.loads(WORDS_FILE.read_text(encoding="utf-8"))

WORDS: dict[str, dict[str, Any]] = _LISTS["tracks"]
TRACKS = list(WORDS)
SUBTOPICS = [(t, s) for t in TRACKS for s in WORDS[t]["subtopics"]]  # global subtopic code = position

ORGANIZATIONS: list[str] = _LISTS["organizations"]
ORG_WEIGHTS = np.array([6.0] + [1.0] * (len(ORGANIZATIONS) - 1))
# Organisations that mostly speak in one track (the others, and these 40% of the time, speak anywhere).
ORG_HOME_TRACK: dict[str, str] = _LISTS["organization_home_track"]

_SETTINGS = _LISTS["settings"]
_ADJECTIVES = _LISTS["adjectives"]
_GENERIC_CHALLENGES = _LISTS["generic_challenges"]
_SPEAKERS = _LISTS["speakers"]
_FILLER = _LISTS["filler"]
_TITLE_CORES = _LISTS["title_cores"]
_TITLE_WRAPS = _LISTS["title_wraps"]
_OPENINGS = _LISTS["openings"]
_METHODS = _LISTS["methods"]
_RESULTS = _LISTS["results"]
_AUDIENCE = _LISTS["audience"]
_FORMAT_SENTENCES = _LISTS["format_sentences"]
_FORMAT_NOUN = _LISTS["format_noun"]
_SMALL_WORDS = set(_LISTS["small_words"])


def _titlecase(text: str) -> str:
    out = []
    for i, word in enumerate(text.split(" ")):
        if (i == 0 or word not in _SMALL_WORDS) and word[:1].islower() and word.islower():
            word = "-".join(p[:1].upper() + p[1:] for p in word.split("-"))
        out.append(word)
    return " ".join(out)


def _with_article(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _all_terms() -> list[str]:
    terms: dict[str, None] = {}
    for track in TRACKS:
        for noun in WORDS[track]["nouns"]:
            terms[noun] = None
        for sub in WORDS[track]["subtopics"].values():
            for key in ("nouns", "methods", "apps"):
                for term in sub[key]:
                    terms[term] = None
    return list(terms)


TERMS = _all_terms()
TERM_INDEX = {t: i for i, t in enumerate(TERMS)}

def _pick(rng: np.random.Generator, items: Sequence[str], k: int = 1) -> list[str]:
    idx = rng.choice(len(items), size=min(k, len(items)), replace=False)
    return [items[i] for i in idx]


def talk_text(rng: np.random.Generator, track: str, sub: str, fmt: str, level: str,
               org: str) -> tuple[str, str, list[str]]:
    """Title, abstract and the key terms (nouns, methods, application) that the text really uses."""
    tv, sv = WORDS[track], WORDS[track]["subtopics"][sub]
    nouns = sv["nouns"] + (tv["nouns"] if rng.random() < 0.35 else [])
    n1, n2 = _pick(rng, nouns, 2)
    m1, m2 = _pick(rng, sv["methods"], 2)
    app = _pick(rng, sv["apps"])[0]
    if rng.random() < 0.1:  # an application borrowed from another track (e.g. LLMs for healthcare)
        other = TRACKS[int(rng.integers(len(TRACKS)))]
        other_sub = _pick(rng, list(WORDS[other]["subtopics"]))[0]
        app = _pick(rng, WORDS[other]["subtopics"][other_sub]["apps"])[0]
    orgs = _pick(rng, [o for o in ORGANIZATIONS if o != org], 1)
    verb = _pick(rng, tv["verbs"])[0]
    fields = {
        "N": n1, "N2": n2, "M": m1, "M2": m2, "A": app, "S": sub, "O": org, "O2": orgs[0],
        "ADJ": _pick(rng, _ADJECTIVES)[0], "ADJL_A": _with_article(_pick(rng, _ADJECTIVES)[0].lower()),
        "SET": _pick(rng, _SETTINGS)[0], "VERB": verb, "VERBCAP": verb[:1].upper() + verb[1:],
        "MET": _pick(rng, tv["metrics"])[0], "FN": _FORMAT_NOUN[fmt],
        "CH": _pick(rng, tv["challenges"] + _GENERIC_CHALLENGES[:3])[0],
        "SPK": _sentence(_pick(rng, _SPEAKERS)[0]), "X": f"{rng.uniform(1.3, 12):.1f}".rstrip("0").rstrip("."),
        "PCT": str(int(rng.integers(8, 70))), "FILLER": _pick(rng, _FILLER)[0],
    }
    core = _pick(rng, _TITLE_CORES)[0].format(**fields)
    wrap = _pick(rng, _TITLE_WRAPS[fmt])[0]
    if fmt == "Talk" or rng.random() < 0.6:
        title = wrap.format(core=core, **fields)
    else:
        title = core
    title = _titlecase(title)

    sentences = [_sentence(_pick(rng, _OPENINGS)[0].format(**fields)),
                 _sentence(_pick(rng, _METHODS)[0].format(**fields))]
    optional = [_pick(rng, _RESULTS)[0], _pick(rng, _AUDIENCE[level])[0], _pick(rng, _FORMAT_SENTENCES[fmt])[0]]
    n_extra = int(rng.integers(0, 3))  # 2-4 sentences in all
    for i in sorted(rng.choice(len(optional), size=n_extra, replace=False)):
        sentences.append(_sentence(optional[i].format(**fields)))
    abstract = " ".join(sentences)
    text = f"{title} {abstract}".lower()
    terms = [t for t in dict.fromkeys([n1, n2, m1, m2, app]) if t.lower() in text]
    return title, abstract, terms

