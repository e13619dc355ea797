"""The notebook contract of docs/notebooks.md, checked on the notebooks' source (no kernel runs)."""
import json
import re

import pytest

from gtcrec.series import NOTEBOOKS_DIR, SMALL, BUDGET_S, notebook_stems

STEMS = notebook_stems()


def _cells(stem):
    return json.loads((NOTEBOOKS_DIR / f"{stem}.ipynb").read_text())["cells"]


def _text(cell):
    return "".join(cell["source"])


def test_the_series_is_numbered_without_gaps():
    assert [s[:2] for s in STEMS] == [f"{i:02d}" for i in range(len(STEMS))]
    assert set(SMALL) == set(STEMS)  # every notebook has its CI-size entry (empty: its defaults)
    assert set(BUDGET_S) == set(STEMS)  # and a time budget at the default size


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_follows_the_contract(stem):
    cells = _cells(stem)
    # its title carries its number, and it ends by saying what the reader built
    assert _text(cells[0]).startswith(f"# {stem[:2]} · "), _text(cells[0])[:60]
    last_markdown = [c for c in cells if c["cell_type"] == "markdown"][-1]
    assert _text(last_markdown).startswith("## What you built")
    # exactly one papermill parameters cell, with ARTIFACTS_DIR
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and re.search(r"^ARTIFACTS_DIR = ", _text(tagged[0]), re.M)
    # it writes its own manifest, under its own stem
    code = "\n".join(_text(c) for c in cells if c["cell_type"] == "code")
    assert f'STEM = "{stem}"' in code and "write_manifest(" in code
    # a story, not a script: prose at least half the code (characters)
    prose = sum(len(_text(c)) for c in cells if c["cell_type"] == "markdown")
    assert prose >= 0.5 * len(code), (prose, len(code))
    # no outputs committed
    assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code")
