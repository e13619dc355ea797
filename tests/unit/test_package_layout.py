"""The package reads like the pipeline: each module belongs to one stage, imports only from its own stage
or earlier ones (never upward), and no two modules import each other, directly or around a loop. Imports
inside functions count too: they are a dependency all the same."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "utils" / "gtcrec"

# earliest first; a module belongs to the stage of its longest matching prefix
STAGES = [
    ("contract shared by every stage", ["gtcrec.layout", "gtcrec.order", "gtcrec.manifest", "gtcrec.device"]),
    ("data", ["gtcrec.data", "gtcrec.embeddings"]),
    ("etl and loader", ["gtcrec.etl", "gtcrec.loader"]),
    ("train", ["gtcrec.representation", "gtcrec.model", "gtcrec.trace", "gtcrec.baselines", "gtcrec.metrics",
               "gtcrec.transfer"]),
    ("serving: the graph inside Triton, the server processes, the repository", ["gtcrec.serving"]),
    ("catalog swap", ["gtcrec.swap"]),
    ("live event", ["gtcrec.live"]),
    ("scale-out and the series runner", ["gtcrec.cluster", "gtcrec.ddp", "gtcrec.series", "gtcrec"]),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports() -> dict[str, set[str]]:
    mods = modules()

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in mods:
                return ".".join(parts[:i])
        return None

    edges = {}
    for name, path in mods.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("gtcrec"):
                found |= {resolve(f"{node.module}.{alias.name}") or resolve(node.module) for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {resolve(alias.name) for alias in node.names if alias.name.startswith("gtcrec")}
        edges[name] = {m for m in found if m and m != name}
    return edges


def stage(module: str) -> int:
    best = max(((len(prefix), k) for k, (_, prefixes) in enumerate(STAGES) for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), default=None)
    assert best is not None, f"{module} belongs to no stage: add it to STAGES"
    return best[1]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_a_later_stage():
    edges = imports()
    upward = [f"{a} ({STAGES[stage(a)][0]}) imports {b} ({STAGES[stage(b)][0]})"
              for a, targets in sorted(edges.items()) for b in sorted(targets) if stage(b) > stage(a)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    assert cycles(imports()) == []


def test_the_checks_see_a_cycle_and_an_upward_import():
    # the checks themselves: a loop through three modules is found, and serving importing the swap is upward
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert stage("gtcrec.swap.switch") > stage("gtcrec.serving.server") > stage("gtcrec.model") > stage("gtcrec.etl")
    assert "gtcrec.serving.serve" in imports() and "gtcrec.trace" in imports()["gtcrec.swap.catalog"]
