"""Runs the notebook series at small sizes, once per test session, into a temporary ARTIFACTS_DIR: the generated
events of notebook 00 (its oracle included), with the new event handed to notebook 07 as a team's files
(CSV, raw column names, ISO times), so that 07, 09 and 10 run on user-shaped files too."""
import json
from pathlib import Path

import pandas as pd
import pytest

from gtcrec.series import NOTEBOOKS_DIR, SMALL, notebook_stems, run_notebook


class Series:
    def __init__(self, root: Path):
        self.root = root
        self.cache = root / "embedding-cache"
        self.done: set[str] = set()

    def params(self, stem: str) -> dict:
        params = dict(SMALL.get(stem, {}))
        if '"EMBED_CACHE = ' in (NOTEBOOKS_DIR / f"{stem}.ipynb").read_text():  # one text cache for every notebook
            params["EMBED_CACHE"] = str(self.cache)
        if stem == "07-catalog-swap":  # the new event as a team brings it: notebooks 07, 09 and 10 read these
            params["CATALOG_FILE"], params["CLICKS_FILE"] = map(str, self.new_event_as_user_files())
        return params

    def new_event_as_user_files(self) -> tuple[Path, Path]:
        """Notebook 00's fall event written the way users write files: CSV, the talk id as ``id`` (the
        accepted alias), a column the series does not use, ISO-8601 click times with a UTC offset."""
        folder = self.root / "your-new-event"
        folder.mkdir(exist_ok=True)
        catalog = pd.read_parquet(self.path("00-data", "fall_catalog")).rename(columns={"talk_id": "id"})
        catalog.assign(room="Hall " + catalog["day"].astype(str)).to_csv(folder / "talks.csv", index=False)
        clicks = pd.read_parquet(self.path("00-data", "fall_clicks"))
        stamps = pd.to_datetime(clicks["timestamp"]).dt.tz_localize("UTC").dt.tz_convert("America/Los_Angeles")
        clicks.assign(timestamp=stamps.map(pd.Timestamp.isoformat), device="app").to_csv(folder / "clicks.csv",
                                                                                        index=False)
        return folder / "talks.csv", folder / "clicks.csv"

    def run(self, stem: str) -> dict:
        """Execute ``stem`` (and every earlier notebook not yet run); returns its manifest."""
        for earlier in notebook_stems():
            if earlier not in self.done:
                run_notebook(earlier, self.root, self.params(earlier))
                self.done.add(earlier)
            if earlier == stem:  # never past the one asked for, run before or not
                break
        return self.manifest(stem)

    def manifest(self, stem: str) -> dict:
        return json.loads((self.root / stem / "manifest.json").read_text())

    def path(self, stem: str, name: str) -> Path:
        return self.root / self.manifest(stem)["outputs"][name]


@pytest.fixture(scope="session")
def series(tmp_path_factory) -> Series:
    return Series(tmp_path_factory.mktemp("artifacts"))
