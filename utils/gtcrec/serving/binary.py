"""Where the ``tritonserver`` binary comes from, and what the wheel's copy needs to run.

In this order:

1. an explicit ``tritonserver`` argument, or the environment variable ``GTCREC_TRITONSERVER``;
2. ``tritonserver`` on ``PATH`` (NVIDIA's containers, which also hold the PyTorch backend);
3. the copy bundled in the ``nvidia-pytriton`` wheel (CPU machines). That copy needs some help:
   a backend directory whose ``python/`` holds the wheel's ``libtriton_python.so``,
   ``triton_python_backend_utils.py`` and the stub built for this interpreter's Python version
   (renamed ``triton_python_backend_stub``); ``LD_LIBRARY_PATH`` with the wheel's libraries and
   the folder of this interpreter's ``libpython3.X.so`` (the stub embeds Python and must load the
   same build as the standard library it then imports); ``PATH`` starting with this
   interpreter's ``bin`` folder (the stub finds its Python environment through ``python3``).

:func:`find_tritonserver` returns a :class:`TritonBinary`; :mod:`gtcrec.serving.server` starts it.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

ENV_BINARY = "GTCREC_TRITONSERVER"


class TritonServerError(RuntimeError):
    """The server could not be found, started, or did not become ready."""


class PortInUseError(TritonServerError):
    """A requested port is already taken (Triton would silently share it: SO_REUSEPORT)."""


@dataclass(frozen=True)
class TritonBinary:
    """Where the server binary is and what it needs around it."""

    executable: Path
    source: str  # "argument", "env", "path" or "pytriton-wheel"
    backend_directory: Path | None = None
    cache_directory: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # variables to prepend/set for the child

    @property
    def bundled(self) -> bool:
        return self.source == "pytriton-wheel"

    def backends(self) -> list[str]:
        """Names of the backends this server can load (folders of its backend directory: the
        assembled one for the wheel, else ``<install>/backends`` as in NVIDIA's containers)."""
        folder = self.backend_directory or (self.executable.resolve().parent.parent / "backends")
        if not Path(folder).is_dir():
            return []
        return sorted(p.name for p in Path(folder).iterdir() if p.is_dir())

    def has_backend(self, name: str) -> bool:
        return name in self.backends()

    def supports_restricted_api(self) -> bool:
        """Whether this server can put API groups behind a header (``--http-restricted-api`` and
        ``--grpc-restricted-protocol``: Triton 2.41, release 23.12, and newer; the bundled 2.51 can)."""
        return _has_flags(str(self.executable), tuple(sorted(self.env.items())),
                          ("--http-restricted-api", "--grpc-restricted-protocol"))


@functools.lru_cache(maxsize=None)
def _has_flags(executable: str, env: tuple, flags: tuple) -> bool:
    try:
        done = subprocess.run([executable, "--help"], capture_output=True, text=True, timeout=30,
                              env={**os.environ, **dict(env)})
    except (OSError, subprocess.TimeoutExpired):
        return False
    text = done.stdout + done.stderr
    return all(flag in text for flag in flags)


# ----------------------------------------------------------------------------------------------
# Finding the binary
# ----------------------------------------------------------------------------------------------

def _pytriton_root() -> Path | None:
    """The ``pytriton/tritonserver`` folder of the installed nvidia-pytriton wheel, if any."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    return root if (root / "bin" / "tritonserver").is_file() else None


def _python_libdir() -> Path:
    """Folder holding this interpreter's shared ``libpython3.X.so``."""
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlibrary = sysconfig.get_config_var("LDLIBRARY") or ""
    if not libdir or not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise TritonServerError(
            "The bundled Triton python backend embeds libpython, but this interpreter "
            f"({sys.executable}) was built without a shared libpython (Py_ENABLE_SHARED=0). "
            "Use a shared-library Python build (e.g. pyenv with PYTHON_CONFIGURE_OPTS=--enable-shared)."
        )
    if ldlibrary and not (Path(libdir) / ldlibrary).exists():
        raise TritonServerError(f"{ldlibrary} not found in {libdir}")
    return Path(libdir)


def _prepend(var: str, *parts: str | os.PathLike) -> str:
    old = os.environ.get(var, "")
    items = [str(p) for p in parts] + ([old] if old else [])
    return os.pathsep.join(items)


def _assemble_backend_dir(root: Path, cache_root: Path | None = None) -> Path:
    """Copy the python backend pieces into ``<cache>/backends/python`` (once per wheel build).

    The stub for this interpreter's Python version is renamed ``triton_python_backend_stub``;
    the backend looks for it next to ``libtriton_python.so``.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    lib = root / "backends" / "python" / "libtriton_python.so"
    utils = root / "backends" / "python" / "triton_python_backend_utils.py"
    for needed in (stub, lib, utils):
        if not needed.is_file():
            raise TritonServerError(f"The nvidia-pytriton wheel lacks {needed} (Python {version}).")
    stamp = hashlib.sha1(
        "|".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (stub, lib, utils)).encode()
    ).hexdigest()[:12]
    if cache_root is None:
        cache_root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gtcrec"
        try:
            cache_root.mkdir(parents=True, exist_ok=True)
        except OSError:  # read-only home: fall back to the temp folder
            cache_root = Path(tempfile.gettempdir()) / f"gtcrec-{os.getuid()}"
    target = cache_root / f"triton-backends-py{version}-{stamp}"
    if (target / "python" / "triton_python_backend_stub").is_file():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".backends-", dir=cache_root))
    (tmp / "python").mkdir()
    shutil.copy2(lib, tmp / "python" / "libtriton_python.so")
    shutil.copy2(utils, tmp / "python" / "triton_python_backend_utils.py")
    shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
    os.chmod(tmp / "python" / "triton_python_backend_stub", 0o755)
    try:
        os.rename(tmp, target)  # atomic; another process may have won the race
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def find_tritonserver(tritonserver: str | os.PathLike | None = None,
                      cache_root: str | os.PathLike | None = None) -> TritonBinary:
    """Locate ``tritonserver`` (argument, ``$GTCREC_TRITONSERVER``, ``PATH``, nvidia-pytriton wheel).

    For the wheel's copy this also assembles the python backend directory and returns the
    environment the child process needs.
    """
    def explicit(path: str | os.PathLike, source: str) -> TritonBinary:
        p = Path(path)
        if p.is_dir():
            p = p / "tritonserver"
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise TritonServerError(f"tritonserver given by {source} is not an executable file: {p}")
        root = _pytriton_root()
        if root is not None and p.resolve() == (root / "bin" / "tritonserver").resolve():
            return _wheel_binary(root, cache_root)
        return TritonBinary(p, source)

    if tritonserver is not None:
        return explicit(tritonserver, "argument")
    if os.environ.get(ENV_BINARY):
        return explicit(os.environ[ENV_BINARY], "env")
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonBinary(Path(on_path), "path")
    root = _pytriton_root()
    if root is None:
        raise TritonServerError(
            "No tritonserver found: pass its path, set $GTCREC_TRITONSERVER, put it on PATH, "
            "or install the nvidia-pytriton wheel (which bundles one)."
        )
    return _wheel_binary(root, cache_root)


def _wheel_binary(root: Path, cache_root: str | os.PathLike | None) -> TritonBinary:
    backends = _assemble_backend_dir(root, Path(cache_root) if cache_root else None)
    wheel_libs = root.parent.parent / "nvidia_pytriton.libs"
    env = {
        "LD_LIBRARY_PATH": _prepend("LD_LIBRARY_PATH", wheel_libs, _python_libdir()),
        # the stub runs Python isolated and finds the environment through `python3` on PATH
        "PATH": _prepend("PATH", Path(sys.executable).parent),
    }
    caches = root / "caches"
    return TritonBinary(root / "bin" / "tritonserver", "pytriton-wheel", backend_directory=backends,
                        cache_directory=caches if caches.is_dir() else None, env=env)
