"""Notebook 10 (the live event: click log, replay, adaptation cycles) under papermill at small sizes.

Bands, from two CI-size runs (the second with the current candidates): prequential recall@10 over the
segments before the cycles at 5 / 20 / 50 % was 0.705 / 0.682 / 0.675 and 0.705 / 0.673 / 0.720 (329, 896
and 1,911 clicks: binomial SEs 0.025 / 0.016 / 0.011; the bands are 0.065 wide around the first run). On
the test split (150 sessions, SE ~0.035) the zero-shot swap scored 0.74 in both; after the cycles the
served version scored 0.74 / 0.74 / 0.78 in the first run (it kept the swap at 5 and 20 %) and 0.72 /
0.713 / 0.767 in the second (it loaded versions at every cycle: the guard passed on 8 and 42 choosing
sessions, and the first two loads cost recall on the test split, within the band). A third run, after
cycles needed 100 clicks to choose on and half a standard error: 0.705 / 0.682 / 0.681; test 0.74 (kept,
40 clicks) / 0.713 / 0.807; by hand, on the newest logged sessions: swap 0.656, per-talk fine-tune 0.704,
the version serving 0.815."""
import pytest

from gtcrec.live import read_cycles

pytestmark = [pytest.mark.notebooks, pytest.mark.xdist_group("notebooks")]  # one xdist worker runs them all, in order


def test_live_event_notebook(series):
    manifest = series.run("10-live-event")
    m, params = manifest["metrics"], manifest["parameters"]

    # every load happened under traffic, and no request failed
    assert m["traffic"]["failed"] == 0 and m["traffic"]["requests"] > 100

    # the log holds every click the replay sent, once; nothing was dropped on the request path
    log = m["log"]
    assert log["clicks_sent_and_logged"] == log["clicks_sent"] > 1000
    assert log["writers_dropped_clicks"] == 0 and log["duplicates_removed"] > log["clicks"]

    # one cycle per share of the stream; a loaded version beat the one serving on the newest sessions
    cycles = m["cycles"]
    assert len(cycles) == len(params["FRACTIONS"]) == len(m["segments"]) == len(m["offline"])
    versions = [c["version"] for c in cycles if c["published"]]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    for c in cycles:
        if c["published"]:
            assert c["scores"][c["chosen"]] > c["scores"]["serving"]
        else:
            assert any(why in c["reason"] for why in ("keeps serving", "nothing to learn", "too few to tell"))
    assert cycles[-1]["published"], cycles[-1]["reason"]  # half the stream: enough to beat the swap
    recorded = read_cycles(series.path("10-live-event", "model_repository"), "executor_model")
    assert [c.get("published", False) for c in recorded] == [c["published"] for c in cycles]

    # what attendees got, segment by segment (bands: 2.5 binomial SEs around the measured run)
    for segment, measured in zip(m["segments"], (0.705, 0.682, 0.675)):
        assert abs(segment["prequential_recall@10"] - measured) < 0.065, segment
    # the test split: the served version never falls far below the swap, and ends above it
    zero = m["zero_shot"]
    assert 0.65 <= zero <= 0.82
    assert all(o["served"] >= zero - 0.035 for o in m["offline"]), m["offline"]
    assert m["offline"][-1]["served"] >= zero, m["offline"]
    assert m["offline"][-1]["served"] <= m["retrained"] + 0.05

    # inside a cycle, by hand: the T4R fine-tune of the per-talk parts learned from the logged clicks, the
    # version serving (fitted on all of them) scores above the swap on their newest sessions, and the
    # control API refused a keyless unload while the model kept serving
    by_hand = m["by_hand"]
    zero_logged = by_hand["swapped model (zero-shot)"]
    assert by_hand["fine-tuned per talk, 1 epoch"] > zero_logged + 0.01, by_hand
    assert by_hand["version serving now"] > zero_logged + 0.05, by_hand
    assert m["keyless_unload_refused"] is True

    # the attack at the end: anonymous spam never reaches the log; the same spam with the key, from as many
    # client ids, is logged and all set aside, and its target learns nothing; honest cycles set nothing aside
    attack = m["attack"]
    assert attack["anonymous_logged"] == 0 and attack["requests_not_logged"] >= 2 * attack["spam_sessions"] > 0
    assert attack["vouched_logged"] == 2 * attack["spam_sessions"] and attack["vouched_kept"] == 0
    assert attack["set_aside"]["sessions"] >= attack["spam_sessions"]
    assert attack["target"] in attack["talks"]["carried_talk"]
    assert all(c["screened"]["set_aside"]["sessions"] == 0 for c in recorded)
