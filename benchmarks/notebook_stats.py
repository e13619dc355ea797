"""How dense each notebook's code cells are, against the targets of issue 35.

For each notebook (every ``notebooks/*.ipynb``, or the paths given) it prints the number of code cells, the
median and largest code cell (characters of source), the cells over 1,200 characters (the cell tagged
``parameters`` left out), the prose/code ratio (markdown characters over code characters, all cells counted) and
whether each target is met: median <= 400, no cell over 1,200, prose >= 0.8x code. A last line sums the series.

    python benchmarks/notebook_stats.py [NOTEBOOK.ipynb ...]

It reads the notebooks' JSON only; no kernel runs.
"""
import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEDIAN_MAX = 400  # characters: the median code cell at most this
CELL_MAX = 1200  # characters: no code cell over this, the parameters cell aside
PROSE_MIN = 0.8  # markdown characters at least this times the code characters


def cell_text(cell: dict) -> str:
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


def is_parameters(cell: dict) -> bool:
    return "parameters" in cell.get("metadata", {}).get("tags", [])


@dataclass
class Stats:
    name: str
    code_sizes: list[int]  # characters of every code cell, in order
    long_cells: list[int]  # sizes over CELL_MAX, the parameters cell left out
    code_chars: int
    prose_chars: int

    @property
    def median(self) -> float:
        return statistics.median(self.code_sizes) if self.code_sizes else 0

    @property
    def largest(self) -> int:
        return max(self.code_sizes, default=0)

    @property
    def ratio(self) -> float:
        return self.prose_chars / self.code_chars if self.code_chars else float("inf")

    @property
    def meets(self) -> dict[str, bool]:
        return {"median": self.median <= MEDIAN_MAX, "max": not self.long_cells, "prose": self.ratio >= PROSE_MIN}


def notebook_stats(cells: list[dict], name: str = "") -> Stats:
    """Counts of one notebook's cells (the ``cells`` list of its JSON)."""
    code = [c for c in cells if c["cell_type"] == "code"]
    sizes = [len(cell_text(c)) for c in code]
    long_cells = [len(cell_text(c)) for c in code if not is_parameters(c) and len(cell_text(c)) > CELL_MAX]
    prose = sum(len(cell_text(c)) for c in cells if c["cell_type"] == "markdown")
    return Stats(name, sizes, long_cells, sum(sizes), prose)


def series_stats(stats: list[Stats]) -> Stats:
    """The series as one notebook: every code cell pooled."""
    return Stats("series", [s for st in stats for s in st.code_sizes], [s for st in stats for s in st.long_cells],
                 sum(st.code_chars for st in stats), sum(st.prose_chars for st in stats))


def table(stats: list[Stats]) -> str:
    def mark(ok):
        return "yes" if ok else "NO"

    head = (f"{'notebook':<28} {'code cells':>10} {'median':>7} {'max':>6} {'>1200':>6} {'prose/code':>10}"
            f"  {'median<=400':>11} {'none>1200':>9} {'prose>=0.8':>10}")
    rows = [head, "-" * len(head)]
    for s in stats + [series_stats(stats)]:
        m = s.meets
        rows.append(f"{s.name:<28} {len(s.code_sizes):>10} {s.median:>7.0f} {s.largest:>6} {len(s.long_cells):>6}"
                    f" {s.ratio:>10.2f}  {mark(m['median']):>11} {mark(m['max']):>9} {mark(m['prose']):>10}")
    met = sum(all(s.meets.values()) for s in stats)
    rows.append(f"{met} of {len(stats)} notebooks meet all three targets")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((REPO / "notebooks").glob("*.ipynb"))
    stats = [notebook_stats(json.loads(p.read_text())["cells"], p.stem) for p in paths]
    print(table(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
