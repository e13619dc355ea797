"""The contract between notebooks.

Every notebook writes ``ARTIFACTS_DIR/<notebook stem>/manifest.json`` holding its parameters,
the paths of what it wrote (relative to ``ARTIFACTS_DIR``) and its metrics/checks. The next
notebook reads its inputs from there and from nothing else.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

MANIFEST = "manifest.json"


def stage_dir(artifacts_dir: str | Path, stem: str) -> Path:
    """The folder a notebook writes into (created if missing), as an absolute path."""
    path = Path(artifacts_dir).resolve() / stem
    path.mkdir(parents=True, exist_ok=True)
    return path


def _plain(value: Any) -> Any:
    """Numbers, strings, lists and dicts that json can write; numpy scalars become Python ones."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_manifest(
    artifacts_dir: str | Path,
    stem: str,
    parameters: Mapping[str, Any],
    outputs: Mapping[str, str | Path],
    metrics: Mapping[str, Any] | None = None,
    run: Mapping[str, Any] | None = None,
) -> Path:
    """Write a notebook's manifest. ``outputs`` maps a name to a path inside ``artifacts_dir``.

    ``metrics`` are deterministic for a seed (a rerun gives the same ones); ``run`` holds what is
    not (timings, cache hits), kept apart so that manifests of two runs can be compared.
    """
    root = Path(artifacts_dir).resolve()
    rel = {}
    for name, path in outputs.items():
        path = Path(path).resolve()
        if not path.exists():
            raise FileNotFoundError(f"output {name!r} does not exist: {path}")
        rel[name] = path.relative_to(root).as_posix()
    doc = {"notebook": stem, "parameters": _plain(dict(parameters)), "outputs": rel,
           "metrics": _plain(dict(metrics or {})), "run": _plain(dict(run or {}))}
    target = stage_dir(root, stem) / MANIFEST
    target.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return target


def rounded(values: Mapping[str, Any], digits: int = 6) -> dict:
    """``values`` (a name -> number mapping) rounded for a manifest; ``None`` stays ``None``."""
    return {k: None if v is None else round(float(v), digits) for k, v in values.items()}


class Manifest(dict):
    """A loaded manifest; ``path(name)`` gives an output's absolute path."""

    root: Path

    def path(self, name: str) -> Path:
        try:
            return self.root / self["outputs"][name]
        except KeyError:
            raise KeyError(f"manifest of {self['notebook']!r} has no output {name!r}; "
                           f"it has {sorted(self['outputs'])}") from None


def read_manifest(artifacts_dir: str | Path, stem: str) -> Manifest:
    """Load the manifest of an earlier notebook, with a clear error when it has not run."""
    root = Path(artifacts_dir).resolve()
    target = root / stem / MANIFEST
    if not target.exists():
        raise FileNotFoundError(f"{target} is missing: run notebook {stem}.ipynb first "
                                f"with the same ARTIFACTS_DIR")
    manifest = Manifest(json.loads(target.read_text()))
    manifest.root = root
    return manifest
