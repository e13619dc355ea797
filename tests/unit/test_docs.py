"""The figures the README and docs/ take from code, checked against the code: every notebook parameter and its
default (docs/parameters.md), the CI sizes (``gtcrec.series.SMALL``), the time budgets and measured times
(``BUDGET_S``, ``BUDGET_F32_S``, ``MEASURED_S``, ``MEASURED_F32_S``) and their sums. Reads files only: no kernel,
no server."""
import ast
import json
import re

import pytest

from gtcrec import series
from gtcrec.series import NOTEBOOKS_DIR, REPO, SMALL, notebook_stems

STEMS = notebook_stems()
STEM = {stem[:2]: stem for stem in STEMS}  # "03" -> "03-train"
CORE = [s for s in STEMS if s[:2] <= "07"]  # the README's core path, 00-07; 08-11 go further
FURTHER = [s for s in STEMS if s[:2] > "07"]


def doc(path):
    return (REPO / path).read_text()


def prose(path):
    """The document with every run of whitespace made one space (markdown wraps lines anywhere)."""
    return " ".join(doc(path).split())


def parameters(stem):
    """``{name: default}`` of the notebook's cell tagged ``parameters`` (literals only, as papermill needs)."""
    cells = json.loads((NOTEBOOKS_DIR / f"{stem}.ipynb").read_text())["cells"]
    [cell] = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    body = ast.parse("".join(cell["source"])).body
    assert all(isinstance(node, ast.Assign) and len(node.targets) == 1 for node in body), stem
    return {node.targets[0].id: ast.literal_eval(node.value) for node in body}


def table(text, header):
    """The cells of each row of the markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def seconds(text):
    """The figures ``N s`` of a table cell, in order (``1,288 s`` -> 1288)."""
    return [int(n.replace(",", "")) for n in re.findall(r"(\d[\d,]*) s\b", text)]


def small_range(text):
    """(low, high) seconds of a "small" cell's first figure: ``~1 min``, ``11–15 s``, ``1.5–2.7 min``."""
    low, high, unit = re.search(r"(\d+(?:\.\d+)?)(?:–(\d+(?:\.\d+)?))? ?(s|min)\b", text).groups()
    factor = 60 if unit == "min" else 1
    return round(float(low) * factor), round(float(high or low) * factor)


def total(table_, stems=STEMS):
    return sum(table_[s] for s in stems)


def commas(n):
    return f"{n:,}"


def literal(cell):
    return ast.literal_eval(cell.strip("`"))


# docs/parameters.md


def test_parameters_md_has_every_parameter_with_its_default_and_ci_value():
    documented = {}
    for number, name, default, small, _ in table(doc("docs/parameters.md"), "| notebook | parameter |"):
        for stem in STEMS if number == "all" else [STEM[number]]:
            assert (stem, name) not in documented, f"{name} of {stem} is listed twice"
            documented[(stem, name.strip("`"))] = (literal(default), literal(small) if small else None)
    expected = {(stem, name): (default, SMALL[stem].get(name))
                for stem in STEMS for name, default in parameters(stem).items()}
    missing = sorted(set(expected) - set(documented))
    extra = sorted(set(documented) - set(expected))
    assert not missing, f"parameters missing from docs/parameters.md: {missing}"
    assert not extra, f"docs/parameters.md lists parameters no notebook has: {extra}"
    wrong = {key: (documented[key], expected[key]) for key in expected if documented[key] != expected[key]}
    assert not wrong, f"(documented, in the code) as (default, small): {wrong}"


def test_every_small_and_tiny_override_is_a_parameter_of_its_notebook():
    # papermill only warns about an unknown parameter; a renamed one would silently stop shrinking CI
    for stem in STEMS:
        assert set(SMALL[stem]) | set(series.TINY.get(stem, {})) <= set(parameters(stem)), stem
    assert set(series.TINY) <= set(STEMS)


# Time budgets and measured times


@pytest.mark.parametrize("path", ["README.md", "docs/notebooks.md"])
def test_notebook_tables_quote_the_budgets_and_measured_times(path):
    rows = table(doc(path), "| notebook | one job |")
    assert [row[0].strip("`") for row in rows] == STEMS
    for row in rows:
        stem = row[0].strip("`")
        assert seconds(row[-1])[:2] == [series.BUDGET_S[stem], series.MEASURED_S[stem]], (path, row[-1])


def test_the_small_columns_agree():
    readme = {row[0]: small_range(row[-2]) for row in table(doc("README.md"), "| notebook | one job |")}
    notebooks = {row[0]: small_range(row[-2]) for row in table(doc("docs/notebooks.md"), "| notebook | one job |")}
    assert readme == notebooks
    low, high = sum(r[0] for r in readme.values()), sum(r[1] for r in readme.values())
    assert f"they add up to {low}–{high} s" in prose("docs/notebooks.md")
    # 10's small run holds one adaptation cycle per fraction
    cycles = len(SMALL["10-live-event"]["FRACTIONS"])
    assert all(f"({cycles} cycles;" in doc(p) for p in ("README.md", "docs/notebooks.md"))


def test_the_float32_table_of_results_md_is_measured_f32_s_and_measured_s():
    rows = table(doc("docs/results.md"), "| notebook | float32, AVX2 kernels |")
    *per_notebook, last = rows
    seen = []
    for row in per_notebook:
        stems = [STEM[n] for n in row[0].split(" · ")]
        assert seconds(row[1]) == [series.MEASURED_F32_S[s] for s in stems], row
        assert seconds(row[-1]) == [series.MEASURED_S[s] for s in stems], row
        seen += stems
    assert seen == STEMS
    assert last[0] == "**all**"
    f32 = total(series.MEASURED_F32_S)
    assert seconds(last[1])[0] == f32 and f"{f32 / 60:.1f} min" in last[1], last[1]
    assert seconds(last[-1]) == [total(series.MEASURED_S)]


def test_the_totals_the_docs_quote_are_the_sums_of_the_code():
    bf16, f32 = total(series.MEASURED_S), total(series.MEASURED_F32_S)
    readme, notebooks = prose("README.md"), prose("docs/notebooks.md")
    for text, phrase in ((readme, f"**{commas(bf16)} s, about {round(bf16 / 60)} minutes**"),
                         (readme, f"**{commas(f32)} s, about {round(f32 / 60)} minutes**"),
                         (notebooks, f"**{commas(bf16)} s in all, about {round(bf16 / 60)} minutes**"),
                         (notebooks, f"{commas(f32)} s, about {round(f32 / 60)} minutes")):
        assert phrase in text, f"a total should read {phrase!r}"


def test_the_whole_small_run_is_quoted_alike():
    # measured once, not in the code: the docs must at least agree with docs/results.md, where it is recorded
    f32, bf16 = re.search(r"`make run SIZE=small` \(the CI sizes\): (\d+) s in this emulation, (\d+) s with native "
                          r"bfloat16", prose("docs/results.md")).groups()
    for path in ("README.md", "docs/notebooks.md"):
        assert f"{bf16} s with native bfloat16" in prose(path) and f"{f32} s in float32" in prose(path), path


# The README's workshop paths


def test_the_workshop_paths_add_up():
    readme = doc("README.md")
    small = {row[0].strip("`"): small_range(row[-2]) for row in table(readme, "| notebook | one job |")}
    rows = {row[0]: row for row in table(readme, "| path | notebooks |")}
    for label, stems in (("core", CORE), ("further", FURTHER), ("all", STEMS)):
        _, span, small_cell, default_cell = rows[label]
        assert span == f"{stems[0][:2]}-{stems[-1][:2]}"
        low, high = sum(small[s][0] for s in stems), sum(small[s][1] for s in stems)
        assert small_range(small_cell) == (low, high), (label, small_cell)
        bf16, f32 = total(series.MEASURED_S, stems), total(series.MEASURED_F32_S, stems)
        assert seconds(default_cell)[:2] == [bf16, f32], (label, default_cell)
        assert f"(about {round(bf16 / 60)} · {round(f32 / 60)} min)" in default_cell, (label, default_cell)
    assert "make run SIZE=small" in readme


# Other figures the docs take from the notebooks' parameters and SMALL


def claims():
    p = {stem[:2]: parameters(stem) for stem in STEMS}
    small = SMALL["00-data"]
    fractions = p["10"]["FRACTIONS"]
    return [
        ("README.md", f"({small['N_TALKS']} talks, {commas(small['N_SESSIONS'])} sessions)"),
        ("docs/notebooks.md", f"({small['N_TALKS']} talks, {commas(small['N_SESSIONS'])} sessions)"),
        ("README.md", f"{commas(p['00']['N_TALKS'])} talks and {commas(p['00']['N_SESSIONS'])} sessions"),
        ("docs/notebooks.md", f"{commas(p['00']['N_TALKS'])} talks and {commas(p['00']['N_SESSIONS'])} sessions"),
        ("README.md", f"cut to the last {p['01']['MAX_LEN']} clicks"),
        ("docs/notebooks.md", f"`ListSlice(-{p['01']['MAX_LEN']})` keeps the last {p['01']['MAX_LEN']} clicks"),
        ("README.md", f"{p['09']['N_REPLICAS']} Triton replicas"),
        ("docs/notebooks.md", f"A fleet of {p['09']['N_REPLICAS']} `tritonserver` replicas"),
        ("docs/notebooks.md", f"on a {p['08']['N_WORKERS']}-worker `dask.distributed` cluster"),
        ("docs/notebooks.md", f"trained by {p['08']['N_PROCS']} processes under `torchrun`"),
        ("docs/notebooks.md", f"(DDP on {commas(p['08']['DDP_SESSIONS'])} sessions, {p['08']['DDP_EPOCHS']} epoch,"),
        ("docs/notebooks.md", f"after {fractions[0] * 100:g}–{fractions[-1] * 100:g} % of them"),
        ("docs/notebooks.md", "{:g}, {:g} and {:g} % at the CI size".format(
            *(f * 100 for f in SMALL["10-live-event"]["FRACTIONS"]))),
        ("docs/notebooks.md", f"a synthetic catalog of {commas(p['11']['N_ITEMS'])} items"),
        ("README.md", f"on {commas(p['11']['N_ITEMS'])} items"),
        ("README.md", f"a real AVX2-only CPU took {series.REAL_AVX2_FACTOR:g} × as long for notebook 03"),
    ]


@pytest.mark.parametrize("path, phrase", claims())
def test_a_figure_the_docs_take_from_the_code_is_the_codes(path, phrase):
    assert phrase in prose(path), f"{path} should say {phrase!r} (the figure comes from the code)"


# Benchmarks


@pytest.mark.parametrize("path", ["README.md", "docs/testing.md"])
def test_every_benchmark_is_named(path):
    text = doc(path)
    missing = [p.name for p in sorted((REPO / "benchmarks").glob("*.py")) if p.name not in text]
    assert not missing, f"{path} does not name {missing}"
