"""Your own event from the shell, as docs/your-event.md runs it: the guide's bash blocks, in order, in one bash
session from the repository's root, with only its first block (where things are) replaced by this test's
values: user-shaped files, temporary folders, free ports, ``SIZE=tiny``. Its first step is
`make run CATALOG=... CLICKS=... NEW_CATALOG=...` (every notebook; 10 says why it is skipped), then a
real server with the click log, a swap, replayed clicks, two adaptation cycles, a catalog update, the status,
a rollback and the stop. Each block's exit status and what the guide shows it printing are checked, and each
block's time printed (`pytest -s`).

The files are written the way users write them: CSV, a catalog of only ``id,title`` (``id`` is the talk id's
accepted alias; some titles repeated, as in real catalogs), a new event with ``id,title,abstract``, clicks
with ISO-8601 timestamps with an offset and a column the series does not use. Tiny sizes: this is the smoke
test of the path, the generated run holds the bands. The same invariants as the generated run are asserted
on the manifests. The new event with its clicks (``NEW_CLICKS``: 07 measures, 09 runs a live cycle on the
fleet, 10 replays them) is the generated series' (tests/notebooks/conftest.py), written as a team's files
too."""
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from gtcrec import data
from gtcrec.series import REPO, notebook_stems
from gtcrec.serving.server import free_ports

pytestmark = [pytest.mark.notebooks, pytest.mark.server, pytest.mark.xdist_group("own-event")]  # its own folder
GUIDE = REPO / "docs" / "your-event.md"
# The guide's `make run` runs every notebook here, on a team's files, without the new event's clicks: 07 swaps and
# measures nothing, 09 runs its fleet without a live cycle, and 10 is skipped. The generated series of the same CI runs
# 07, 09 and 10 on a new event written as a team's files with its clicks (tests/notebooks/conftest.py).
ONLY = tuple(notebook_stems())


def user_files(folder):
    """Two events from the generator (its structure makes a model worth training), written as a user would."""
    events = data.generate_events(seed=5, n_talks=120, n_sessions=1200, n_sessions_new_event=600)
    old, new = events.spring, events.fall
    catalog = pd.DataFrame({"id": old.catalog["talk_id"], "title": old.catalog["title"]})
    catalog.loc[:4, "title"] = "Poster session"  # the same text five times: equal vectors, equal scores
    new_catalog = new.catalog[["talk_id", "title", "abstract"]].rename(columns={"talk_id": "id"})

    def as_user_clicks(clicks):
        stamps = pd.to_datetime(clicks["timestamp"]).dt.tz_localize("UTC").dt.tz_convert("Europe/Paris")
        return pd.DataFrame({"session_id": clicks["session_id"], "talk_id": clicks["talk_id"],
                             "timestamp": stamps.map(pd.Timestamp.isoformat), "device": "web"})

    folder.mkdir(parents=True)
    files = {"catalog": folder / "catalog.csv", "clicks": folder / "clicks.csv",
             "new_catalog": folder / "new_catalog.csv", "new_clicks": folder / "new_clicks.csv"}
    catalog.to_csv(files["catalog"], index=False)
    as_user_clicks(old.clicks).to_csv(files["clicks"], index=False)
    new_catalog.to_csv(files["new_catalog"], index=False)
    as_user_clicks(new.clicks).to_csv(files["new_clicks"], index=False)
    return files, catalog, new_catalog


def guide_blocks(text: str) -> list[tuple[str, str]]:
    """The guide's ```bash blocks, each with the ```text block that follows it (what it prints, trimmed), or ''."""
    blocks: list[tuple[str, str]] = []
    for kind, body in re.findall(r"^```(bash|text)\n(.*?)^```", text, re.S | re.M):
        if kind == "bash":
            blocks.append((body, ""))
        else:
            assert blocks and not blocks[-1][1], "a ```text block follows no ```bash block of its own"
            blocks[-1] = (blocks[-1][0], body)
    return blocks


def shown_line(line: str) -> re.Pattern:
    """A line the guide shows a command printing, as a pattern: ``…`` stands for anything, and every number for
    any number (times, counts and versions differ from run to run and size to size)."""
    parts = [re.sub(r"\d[\d,]*(\\\.\d+)?", r"[\\d,.]+", re.escape(part)) for part in line.split("…")]
    return re.compile(".*".join(parts))


def run_guide(variables: dict[str, str], blocks: list[tuple[str, str]], log: Path) -> list[dict]:
    """Run the guide's blocks after the first in one bash session (``set -euo pipefail``), the first replaced by
    ``variables``; returns each block's output and seconds. Fails at the first block that fails. Whatever the
    blocks left running (the background server) is stopped at the end, by its process group."""
    folder = log.parent
    script = ["set -euo pipefail"] + [f"{k}={v}" for k, v in variables.items()]
    for i, (body, _) in enumerate(blocks[1:], start=1):
        (folder / f"block{i}.sh").write_text(body)
        script += [f"echo '@@begin {i}'", f"source {folder / f'block{i}.sh'}", f"echo '@@end {i}'"]
    proc = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    runs, current = [], None
    try:
        with open(log, "w") as out:
            for line in proc.stdout:
                out.write(line)
                if line.startswith("@@begin "):
                    current = {"block": int(line.split()[1]), "output": [], "start": time.monotonic()}
                elif line.startswith("@@end "):
                    current["seconds"] = time.monotonic() - current["start"]
                    runs.append(current)
                    print(f"docs/your-event.md block {current['block']}: {current['seconds']:.1f} s", flush=True)
                elif current is not None:
                    current["output"].append(line.rstrip("\n"))
        code = proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a server a failed block left behind
        except ProcessLookupError:
            pass
    tail = "\n".join((current or {"output": []})["output"][-40:])
    assert code == 0, f"docs/your-event.md block {len(runs) + 1} failed (exit {code}); full output in {log}:\n{tail}"
    assert len(runs) == len(blocks) - 1
    for run, (body, shown) in zip(runs, blocks[1:]):
        printed = "\n".join(run["output"])
        for line in filter(None, (ln.strip() for ln in shown.splitlines())):
            assert shown_line(line).search(printed), (f"block {run['block']} did not print {line!r}:\n"
                                                     + printed[-3000:])
    return runs


@pytest.fixture(scope="module")
def own_event(tmp_path_factory):
    root = tmp_path_factory.mktemp("own-event")
    files, catalog, new_catalog = user_files(root / "files")
    http_port, grpc_port = free_ports(2)
    variables = {"CATALOG": files["catalog"], "CLICKS": files["clicks"], "NEW_CATALOG": files["new_catalog"],
                 "LIVE_CLICKS": files["new_clicks"], "SIZE": "tiny", "ART": root / "artifacts", "LIVE": root / "live",
                 "HTTP_PORT": http_port, "GRPC_PORT": grpc_port, "CACHE": REPO / "data" / "cache" / "embeddings",
                 "BUDGET": 5, "ONLY": '""'}
    blocks = guide_blocks(GUIDE.read_text())
    first = dict(re.findall(r"^(\w+)=(\S+)", blocks[0][0], re.M))
    first.update(re.findall(r" (\w+)=(\S+)", blocks[0][0]))  # HTTP_PORT=... GRPC_PORT=... on one line
    assert set(first) == set(variables), "the guide's first block sets other variables than this test replaces"
    started = time.monotonic()
    runs = run_guide({k: str(v) for k, v in variables.items()}, blocks, root / "guide.log")
    art, live = root / "artifacts", root / "live"
    manifests = {stem: json.loads((art / stem / "manifest.json").read_text())
                 for stem in ONLY if stem != "10-live-event"}
    return {"root": root, "art": art, "live": live, "files": files, "catalog": catalog, "new_catalog": new_catalog,
            "runs": runs, "manifests": manifests, "seconds": time.monotonic() - started}


def test_every_notebook_runs_on_your_files(own_event):
    m = {stem: manifest["metrics"] for stem, manifest in own_event["manifests"].items()}
    make_run = "\n".join(own_event["runs"][0]["output"])
    assert all(f"[series] {stem} done in" in make_run for stem in ONLY if stem != "10-live-event")
    # without NEW_CLICKS, 07 swaps and says it measured nothing; 10 is skipped and says why
    assert m["07-catalog-swap"]["quality"] is None and "new_clicks" not in own_event["manifests"]["07-catalog-swap"]["outputs"]
    assert "no clicks of the new event: quality not measured" in (own_event["art"] / "executed" /
                                                                 "07-catalog-swap.ipynb").read_text()
    assert "[series] 10-live-event skipped: it replays the new event's clicks" in make_run
    assert not (own_event["art"] / "10-live-event").exists()
    # 00: your catalog, no generated event, no oracle; only id and title: no tracks, the title is the text
    outputs = own_event["manifests"]["00-data"]["outputs"]
    assert m["00-data"]["spring"]["talks"] == len(own_event["catalog"]) and "fall_catalog" not in outputs
    assert not any("oracle" in name for name in outputs) and m["00-data"]["spring"]["tracks"] == 0
    catalog = data.load_catalog(own_event["art"] / outputs["spring_catalog"])
    assert list(catalog.columns) == data.CATALOG_COLUMNS and catalog["day"].isna().all()
    # 01-04: the table rows are the codes, the loader joins them, the text table stays frozen
    assert m["01-etl"]["row_check_max_abs_diff"] == 0.0 and m["01-etl"]["codes_are_rows"] is True
    assert m["03-train"]["frozen_table_unchanged"] is True and "oracle" not in m["03-train"]["test"]
    assert m["04-item-representation"]["catalog_in_vocabulary_order"] is True
    assert m["04-item-representation"]["ratios"]["model_over_oracle_recall@10"] is None
    # 05: the export answers unknown talks by the fallback
    assert m["05-ensemble"]["reference_fallback_sessions"] >= 1
    assert m["05-ensemble"]["popularity_codes"] == len(own_event["catalog"]) + 3
    # 02: the loader joins the table's rows to the codes exactly
    assert m["02-dataloader"]["joined_max_abs_diff"] == 0.0
    # 06: the served answers are the in-process ones
    assert m["06-serve"]["parity"] is True and m["06-serve"]["parity_reference_grpc"] is True
    # 07: your new event swapped in under traffic
    assert m["07-catalog-swap"]["traffic"] == {"failed": 0, "before_only": True, "after_only": True, "ordered": True}
    # 08: the ETL on a Dask cluster gives what one process gives
    assert m["08-scale-out"]["etl"]["equal"] and m["08-scale-out"]["etl"]["counts_equal"]
    # 09: a fleet of two replicas on your files: load over both, a fleet swap and a rollback under traffic with
    # nothing failed; no live cycle without the new event's clicks, and it says so
    fleet = m["09-fleet"]
    assert fleet["fleet_load"]["errors"] == 0 and len(fleet["fleet_load"]["per_replica"]) == 2
    assert fleet["fleet_swap"]["failed"] == 0 and list(fleet["fleet_swap"]["serving"].values()) == [[2], [2]]
    assert fleet["fleet_rollback"]["failed"] == 0 and list(fleet["fleet_rollback"]["serving"].values()) == [[1], [1]]
    assert "fleet_cycle" not in fleet and fleet["fleet_stopped"]
    assert "notebook 07 had no clicks of the new event: no cycle to run" in (own_event["art"] / "executed" /
                                                                            "09-fleet.ipynb").read_text()
    # 11: the retrieval graph answers as the exact graph does, up to talks of equal score
    served = m["11-large-catalogs"]["served"]
    assert served["same_up_to_ties"] is True and served["different"] == 0 and served["sessions"] > 0
    new = pd.read_parquet(own_event["art"] / own_event["manifests"]["07-catalog-swap"]["outputs"]["new_catalog"])
    assert sorted(new["talk_id"]) == sorted(own_event["new_catalog"]["id"])


def test_your_event_live_from_the_shell(own_event):
    """The guide's steps after make run did what they print: a swap, logged clicks, two cycles, an update, the
    status, a rollback, a stop."""
    live, new_ids = own_event["live"], own_event["new_catalog"]["id"].astype(str).tolist()
    # the server made both keys readable by their owner only and logged the replayed clicks (the key sent)
    assert all((live / name).stat().st_mode & 0o777 == 0o600 for name in ("log.key", "control.key"))
    assert (live / "tritonserver.log").stat().st_size > 0  # --log
    from gtcrec.live import read_click_log

    logged, _ = read_click_log(live / "clicks", catalog_ids=new_ids)
    assert logged["session_id"].nunique() == 300
    cycles = [json.loads(line) for line in (live / "cycles.jsonl").read_text().splitlines()]
    assert len(cycles) == 2 and cycles[0]["serving_before"] == 2  # the swap's version, then one cycle per 150 sessions
    assert [c["log"]["sessions"] for c in cycles] == [150, 300]
    update = json.loads((live / "update.json").read_text())
    assert update["changes"]["added"] == ["LATE-1"] and update["changes"]["cancelled"] == [new_ids[0]]
    status = json.loads((live / "status.json").read_text())
    assert status["serving"] == [update["version"]] and status["agree"]
    rows = json.loads((live / "cycles.json").read_text())
    assert [r["kind"] for r in rows] == ["cycle", "cycle", "catalog update"]
    rollback = "\n".join(own_event["runs"][7]["output"])
    assert f"version {status['serving'][0] - 1}" in rollback or "rolled back" in rollback, rollback
    stop = own_event["runs"][8]["output"]
    assert stop[-1] == "[gtcrec-serve] stopped"
    print(f"docs/your-event.md in {own_event['seconds']:.0f} s: "
          + ", ".join(f"{r['block']}: {r['seconds']:.0f} s" for r in own_event["runs"]))


@pytest.fixture(scope="module")
def with_clicks(own_event):
    """`make run ... NEW_CLICKS=... ONLY="07-catalog-swap 10-live-event"` on a copy of the guide's artifacts: the
    same title-only event, now with this year's clicks, as a team runs it after (or rehearsing) the event."""
    art = own_event["root"] / "with-clicks"
    shutil.copytree(own_event["art"], art)
    files = own_event["files"]
    done = subprocess.run(["make", "run", "SIZE=tiny", f"ARTIFACTS_DIR={art}", f"CATALOG={files['catalog']}",
                           f"CLICKS={files['clicks']}", f"NEW_CATALOG={files['new_catalog']}",
                           f"NEW_CLICKS={files['new_clicks']}", "ONLY=07-catalog-swap 10-live-event"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {stem: json.loads((art / stem / "manifest.json").read_text()) for stem in ("07-catalog-swap", "10-live-event")}


def test_with_the_new_events_clicks_07_measures_and_10_replays_them(with_clicks):
    swap, live = with_clicks["07-catalog-swap"], with_clicks["10-live-event"]
    assert "new_clicks" in swap["outputs"] and swap["metrics"]["quality"] is not None
    assert swap["metrics"]["traffic"]["failed"] == 0
    m = live["metrics"]
    assert m["traffic"]["failed"] == 0 and m["traffic"]["requests"] > 0
    assert m["log"]["clicks_sent_and_logged"] == m["log"]["clicks_sent"] > 0 and m["log"]["writers_dropped_clicks"] == 0
    assert len(m["cycles"]) == len(live["parameters"]["FRACTIONS"]) == len(m["segments"])
    attack = m["attack"]
    assert attack["anonymous_logged"] == 0 and attack["vouched_kept"] == 0
