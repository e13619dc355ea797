"""Runs the notebook series at small sizes, once per test session, into a temporary ARTIFACTS_DIR."""
import json
from pathlib import Path

import pytest

from gtcrec.series import SMALL, notebook_stems, run_notebook


class Series:
    def __init__(self, root: Path):
        self.root = root
        self.cache = root / "embedding-cache"
        self.done: set[str] = set()

    def params(self, stem: str) -> dict:
        params = dict(SMALL.get(stem, {}))
        if stem in ("00-data", "07-catalog-swap", "10-live-event"):
            params["EMBED_CACHE"] = str(self.cache)
        return params

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
