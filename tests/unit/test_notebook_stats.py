"""The counting of benchmarks/notebook_stats.py (cell sizes, prose/code, the targets of issue 35), on a tiny
hand-made notebook: no kernel, no notebook of the series."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ns():
    spec = importlib.util.spec_from_file_location("notebook_stats", ROOT / "benchmarks" / "notebook_stats.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["notebook_stats"] = module
    spec.loader.exec_module(module)
    return module


def code(text, tags=()):
    lines = text.splitlines(keepends=True)  # as .ipynb files store it: a list of lines
    return {"cell_type": "code", "metadata": {"tags": list(tags)} if tags else {}, "outputs": [], "source": lines}


def markdown(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text}  # a plain string is valid too


def tiny():
    return [
        markdown("# 00 · tiny"),  # 11 characters
        code("A = 1\n" * 300, tags=["parameters"]),  # 1,800: long, but the parameters cell
        markdown("m" * 989),
        code("x" * 100),
        code("y = 2\nz = 3\n"),  # 12
        code("w" * 1201),  # one over the limit
        {"cell_type": "raw", "metadata": {}, "source": "r" * 5000},  # neither code nor prose
    ]


def test_counts(ns):
    s = ns.notebook_stats(tiny(), "tiny")
    assert s.code_sizes == [1800, 100, 12, 1201]
    assert s.code_chars == 3113 and s.prose_chars == 1000
    assert s.median == 650.5 and s.largest == 1800
    assert s.long_cells == [1201]  # the parameters cell is not counted as long
    assert s.ratio == pytest.approx(1000 / 3113)
    assert s.meets == {"median": False, "max": False, "prose": False}


def test_targets_at_their_edges(ns):
    cells = [code("p = 1\n" * 400, tags=["parameters"]), code("a" * 400), code("b" * 1200), code("c" * 10),
             code("e" * 400), markdown("d" * round(0.8 * (2400 + 400 + 1200 + 10 + 400)))]
    s = ns.notebook_stats(cells)
    assert s.median == 400 and s.long_cells == [] and s.ratio == pytest.approx(0.8)
    assert s.meets == {"median": True, "max": True, "prose": True}


def test_series_pools_the_cells(ns):
    one, two = ns.notebook_stats(tiny(), "one"), ns.notebook_stats([code("q" * 10), markdown("m" * 30)], "two")
    s = ns.series_stats([one, two])
    assert s.code_sizes == one.code_sizes + [10] and s.long_cells == [1201]
    assert (s.code_chars, s.prose_chars) == (3123, 1030)


def test_command_line_on_a_file(ns, tmp_path, capsys):
    path = tmp_path / "00-tiny.ipynb"
    path.write_text(json.dumps({"cells": tiny(), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert ns.main([str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].split() == ["00-tiny", "4", "650", "1800", "1", "0.32", "NO", "NO", "NO"]
    assert out[-1] == "0 of 1 notebooks meet all three targets"


def test_the_series_notebooks_parse(ns):
    """Every notebook of the series is counted (no target asserted: not every notebook meets them yet)."""
    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert paths
    for path in paths:
        s = ns.notebook_stats(json.loads(path.read_text())["cells"], path.stem)
        assert s.code_sizes and s.prose_chars > 0
