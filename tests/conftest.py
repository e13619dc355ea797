"""Test tiers, and a guard that keeps them honest.

* ``make test-fast`` (``pytest -m "not server and not notebooks"``): unit tests without a Triton server
  and without papermill.
* ``make test`` (CI): everything.

A test that starts ``tritonserver`` (in-process through :class:`gtcrec.serving.server.TritonServer`, through a
``gtcrec-serve`` subprocess, or inside a notebook's kernel) must carry the ``server`` marker. The guard
enforces it: while a test WITHOUT the marker runs (its fixtures included), ``$GTCREC_TRITONSERVER`` (the
first place :func:`gtcrec.serving.server.find_tritonserver` looks after an explicit argument) names a stub
that exits with an error saying so, and every child process inherits it. So a server test that lost its
marker fails in the full tier instead of slowing down the fast one.
"""
from __future__ import annotations

import inspect
import os
import re
import stat
import tempfile
from pathlib import Path

import pytest

ENV_BINARY = "GTCREC_TRITONSERVER"
# Notebooks that start a server (06 serves, 07 hot-swaps, 09 runs a fleet, 10 adapts, 11 serves the retrieval
# path). A notebook test that runs one (``series.run("06-...")``
# in its source), or sits in one of these files, is marked ``server`` here, so that the notebook test files need
# not know about the guard.
SERVER_NOTEBOOKS = ("06-serve", "07-catalog-swap", "09-fleet", "10-live-event", "11-large-catalogs")
SERVER_NOTEBOOK_TESTS = {"test_05_06_serving.py", "test_07_swap.py", "test_08_09_scale_out.py", "test_10_live.py",
                         "test_11_large_catalogs.py"}
STUB_MESSAGE = "tritonserver was started by a test without the `server` marker (see tests/conftest.py)"

_stub_dir = Path(tempfile.mkdtemp(prefix="gtcrec-no-server-"))
STUB = _stub_dir / "tritonserver"
STUB.write_text(f"#!/bin/sh\necho '{STUB_MESSAGE}' >&2\nexit 3\n")
STUB.chmod(STUB.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
_ORIGINAL = os.environ.get(ENV_BINARY)

# `make test` runs three pytest-xdist workers on a 2-core machine. Each worker, and every notebook kernel it starts
# (they inherit the environment and import gtcrec), then runs torch on one intra-op thread
# (gtcrec.device.THREADS_ENV), so that the workers do not oversubscribe the cores. A value already set wins.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if os.environ.get("PYTEST_XDIST_WORKER") and _WORKERS > 1:
    os.environ.setdefault("GTCREC_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# The control key (gtcrec.serving.access): tests never read or write the user's own key file
# (~/.config/gtcrec/control.key) and start from no key at all; gtcrec-serve subprocesses create theirs here.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="gtcrec-test-config-")
for _name in ("GTCREC_CONTROL_KEY", "GTCREC_CONTROL_KEY_FILE"):
    os.environ.pop(_name, None)


# The two precisions training can take (gtcrec.device: GTCREC_BF16=0 float32, =1 bfloat16 autocast). A test
# whose numbers depend on the precision asks for the `precision` fixture and so runs once under each, with
# `[fp32]` / `[bf16]` in its id: `make test` exercises both paths on a machine of either kind (bfloat16 is
# emulated, and slower, on a CPU without AVX512-BF16 or AMX-BF16). Module-scoped, so that a module's trained
# fixtures are built once per precision when they ask for it too.
# The tolerances of those tests are float32's, not bfloat16's: training takes the autocast off afterwards
# (gtcrec.model.drop_mixed_precision), so every score they compare is a float32 forward of float32 weights,
# whichever precision trained them: 1e-6 to 1e-5 where the same forward runs again or only the order of float32
# sums changes (scores are O(1-10), float32 carries 7 digits); 1e-4 where a traced graph, another batch's padding
# or an attention over other lengths runs other kernels on the same numbers. A forward left under bfloat16
# would miss them by 1e-2 and more (8 significant bits), which is what they catch.
PRECISIONS = {"fp32": "0", "bf16": "1"}


@pytest.fixture(scope="module", params=list(PRECISIONS))
def precision(request):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GTCREC_BF16", PRECISIONS[request.param])
        yield request.param


def _runs_a_server_notebook(item) -> bool:
    try:
        source = inspect.getsource(item.function)
    except (AttributeError, OSError, TypeError):
        return False
    return any(re.search(r"\.run\(\s*[\"']" + re.escape(stem), source) for stem in SERVER_NOTEBOOKS)


def _shares_a_module_fixture(item) -> bool:
    """The test uses a module-scoped fixture of its own module (a trained model, a running server)."""
    info = getattr(item, "_fixtureinfo", None)
    module = getattr(getattr(item, "module", None), "__name__", None)
    return info is not None and any(d.scope == "module" and getattr(d.func, "__module__", None) == module
                                    for defs in info.name2fixturedefs.values() for d in defs)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("server") is None and (
                item.path.name in SERVER_NOTEBOOK_TESTS
                or (item.get_closest_marker("notebooks") is not None and _runs_a_server_notebook(item))):
            item.add_marker(pytest.mark.server)
        # The tests of a module that share one of its module-scoped fixtures run on one xdist worker, so the
        # fixture (a server, a trained model) is built once, not once per worker that happens to get a test.
        if item.get_closest_marker("xdist_group") is None and _shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def _restore() -> None:
    if _ORIGINAL is None:
        os.environ.pop(ENV_BINARY, None)
    else:
        os.environ[ENV_BINARY] = _ORIGINAL


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("server") is None:
        os.environ[ENV_BINARY] = str(STUB)
    else:
        _restore()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    _restore()
