"""Who may change what a server serves: Triton's control APIs behind a key.

Every ``tritonserver`` this project starts (:class:`gtcrec.serving.server.TritonServer`, hence
``gtcrec-serve``, the notebooks, the fleet replicas and the compose / Kubernetes deployments) is
started with ``--http-restricted-api`` and ``--grpc-restricted-protocol`` for the groups in
:data:`RESTRICTED`. A request to one of those groups is refused unless it carries the header
:data:`HEADER` with the control key. Inference, health and metadata stay open: a client asking for
recommendations needs nothing more.

Where the key comes from (:func:`read_key`), in this order:

1. an explicit argument;
2. the environment variable ``GTCREC_CONTROL_KEY``;
3. the file named by ``GTCREC_CONTROL_KEY_FILE`` (a Docker / Kubernetes secret mounted as a file);
4. the default file ``$XDG_CONFIG_HOME/gtcrec/control.key`` (``~/.config/gtcrec/control.key``), which
   ``gtcrec-serve`` creates, readable by its owner only, when no key is found (:func:`ensure_key_file`).

The project's own control tools (``gtcrec-swap``, the healing watcher of ``gtcrec-serve``, the fleet
swap) send it through :class:`ControlClient`. The key is never printed: :func:`redact` hides it in
anything shown (a server's command line, error messages).

The **logging key** (:func:`read_log_key`) is the second secret: the deploying app sends it with each
request it vouches for (the Triton request parameter ``gtcrec_log_key``, with the attendee's id in
``gtcrec_client_id``), and only those requests reach the click log of a server started with one. It
comes from ``--log-key-file`` (created with a new key, mode 0600, when absent), ``$GTCREC_LOG_KEY`` or
the file named by ``$GTCREC_LOG_KEY_FILE``; there is no default file: a server that logs clicks is told
which key to accept. It is never printed either.
"""
from __future__ import annotations

import inspect
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

HEADER = "gtcrec-control-key"
# Triton reads a gRPC restricted protocol's key from the metadata entry of this name (HTTP: HEADER itself)
GRPC_HEADER = "triton-grpc-protocol-" + HEADER
ENV_KEY = "GTCREC_CONTROL_KEY"
ENV_KEY_FILE = "GTCREC_CONTROL_KEY_FILE"
# Triton's API groups that change or reveal the server's state. Open: inference, health, metadata.
RESTRICTED = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")
# tritonclient methods a recommendation client uses: they never carry the key.
OPEN_METHODS = frozenset({"infer", "async_infer", "start_stream", "stop_stream", "async_stream_infer",
                          "is_server_live", "is_server_ready", "is_model_ready", "get_server_metadata",
                          "get_model_metadata", "close"})


ENV_LOG_KEY = "GTCREC_LOG_KEY"
ENV_LOG_KEY_FILE = "GTCREC_LOG_KEY_FILE"


class ControlKeyError(RuntimeError):
    """No usable control key (a missing or empty key file, a malformed key)."""


class LogKeyError(ControlKeyError):
    """No usable logging key (a missing or empty key file, a key of characters it cannot hold)."""


def default_key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "gtcrec" / "control.key"


def _check(key: str, source: str, what: str = "control key") -> str:
    error = LogKeyError if what == "logging key" else ControlKeyError
    key = key.strip()
    if not key:
        raise error(f"the {what} from {source} is empty")
    # Triton parses "group,group:key=value": the value must not hold those separators or spaces; a
    # logging key travels as a request parameter and a header: printable ASCII only
    ascii_only = what == "logging key"
    bad = sorted({c for c in key if c in ",:=" or c.isspace() or not c.isprintable() or (ascii_only and not c.isascii())})
    if bad:
        raise error(f"the {what} from {source} holds characters it cannot take: {bad} (use letters, digits, "
                    "'-' and '_', as a new key does)")
    return key


def _read_file(path: Path, source: str, what: str = "control key") -> str:
    try:
        return _check(path.read_text(), source, what)
    except FileNotFoundError:
        raise (LogKeyError if what == "logging key" else ControlKeyError)(f"{source}: no such file") from None
    except UnicodeDecodeError as exc:
        raise (LogKeyError if what == "logging key" else ControlKeyError)(
            f"{source}: not text ({exc.reason})") from None


def read_key(key: str | None = None) -> str | None:
    """The control key from the argument, ``$GTCREC_CONTROL_KEY``, ``$GTCREC_CONTROL_KEY_FILE`` or the
    default file, in that order; None when there is none."""
    if key is not None:
        return _check(key, "the argument")
    if os.environ.get(ENV_KEY):
        return _check(os.environ[ENV_KEY], f"${ENV_KEY}")
    if os.environ.get(ENV_KEY_FILE):
        path = Path(os.environ[ENV_KEY_FILE])
        return _read_file(path, f"${ENV_KEY_FILE} ({path})")
    path = default_key_file()
    if path.is_file():
        return _read_file(path, str(path))
    return None


def new_key() -> str:
    return secrets.token_urlsafe(32)


def ensure_key_file(path: str | os.PathLike | None = None, what: str = "control key") -> Path:
    """The key file at ``path`` (default :func:`default_key_file`), created with a new key and mode
    0600 when absent. An existing file is kept (and checked)."""
    path = Path(path) if path is not None else default_key_file()
    if path.is_file():
        _read_file(path, str(path), what)
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "w") as f:
        f.write(new_key() + "\n")
    return path


def key_for_command(key_file: str | os.PathLike | None = None, create: bool = False) -> tuple[str | None, str]:
    """A command line's key and where it came from (to print; never the key itself):
    ``--control-key-file`` when given, else :func:`read_key`; with ``create`` (``gtcrec-serve``), the
    default file is made when no key is found anywhere."""
    if key_file is not None:
        path = Path(key_file)
        if create:
            ensure_key_file(path)
        return _read_file(path, str(path)), str(path)
    key = read_key()
    if key is not None:
        source = (f"${ENV_KEY}" if os.environ.get(ENV_KEY) else
                  os.environ.get(ENV_KEY_FILE) or str(default_key_file()))
        return key, source
    if create:
        path = ensure_key_file()
        return _read_file(path, str(path)), str(path)
    return None, "nowhere"


def read_log_key(key_file: str | os.PathLike | None = None, create: bool = False) -> tuple[str | None, str]:
    """The logging key and where it came from (to print; never the key itself): ``key_file`` (made with a
    new key, mode 0600, when absent and ``create``), else ``$GTCREC_LOG_KEY``, else the file named by
    ``$GTCREC_LOG_KEY_FILE``; ``(None, "nowhere")`` when none is set. A key of characters it cannot hold
    raises :class:`LogKeyError` with the reason."""
    what = "logging key"
    if key_file is not None:
        path = Path(key_file)
        if create:
            ensure_key_file(path, what)
        return _read_file(path, str(path), what), str(path)
    if os.environ.get(ENV_LOG_KEY):
        return _check(os.environ[ENV_LOG_KEY], f"${ENV_LOG_KEY}", what), f"${ENV_LOG_KEY}"
    if os.environ.get(ENV_LOG_KEY_FILE):
        path = Path(os.environ[ENV_LOG_KEY_FILE])
        return _read_file(path, f"${ENV_LOG_KEY_FILE} ({path})", what), str(path)
    return None, "nowhere"


def check_log_key(key: str, source: str = "the argument") -> str:
    """``key`` stripped, or :class:`LogKeyError` saying why it cannot be a logging key."""
    return _check(key, source, "logging key")


def server_args(key: str) -> list[str]:
    """The tritonserver flags that put :data:`RESTRICTED` behind ``key`` on both protocols."""
    key = _check(key, "the server's key")
    groups = ",".join(RESTRICTED)
    return [f"--http-restricted-api={groups}:{HEADER}={key}",
            f"--grpc-restricted-protocol={groups}:{HEADER}={key}"]


def headers(key: str | None, protocol: str = "http") -> dict[str, str]:
    """The header (HTTP) or metadata entry (gRPC) that carries ``key``."""
    return {GRPC_HEADER if protocol == "grpc" else HEADER: key} if key else {}


def refused(exc: BaseException) -> bool:
    """Whether a tritonclient error is Triton refusing a restricted API (no key, or a wrong one: Triton
    answers both alike; gRPC status UNAVAILABLE, HTTP 403)."""
    return "is restricted, expecting header" in str(exc)


def redact(text: str, key: str | None) -> str:
    return text.replace(key, "<control key>") if key else text


class ControlClient:
    """A tritonclient ``InferenceServerClient`` (gRPC or HTTP) that sends the control key with every
    call outside :data:`OPEN_METHODS` (``load_model``, ``unload_model``, ``get_model_repository_index``,
    ``get_inference_statistics``, ...), unless the call passes its own ``headers``. Everything else
    is the wrapped client's."""

    def __init__(self, client, key: str | None):
        self._client = client
        self.protocol = "grpc" if type(client).__module__.startswith("tritonclient.grpc") else "http"
        self._headers = headers(key, self.protocol)

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if name in OPEN_METHODS or not callable(attr):
            return attr
        try:
            takes_headers = "headers" in inspect.signature(attr).parameters
        except (TypeError, ValueError):  # pragma: no cover - a builtin
            takes_headers = False
        if not takes_headers:
            return attr

        def with_key(*args, **kwargs):
            if kwargs.get("headers") is None and self._headers:
                kwargs["headers"] = dict(self._headers)
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                if refused(exc):
                    sent = "a key that does not match" if self._headers else "no key"
                    raise ControlKeyError(
                        f"the server refused {name} ({self.protocol}): its control APIs need the control key, and "
                        f"this call sent {sent}. Pass --control-key-file, or set ${ENV_KEY_FILE} / ${ENV_KEY} to the "
                        f"key the server was started with (gtcrec-serve prints where it is)") from None
                raise

        with_key.__name__ = name
        return with_key

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"ControlClient({self._client!r})"


def control_client(url: str, key: str | None = None, protocol: str = "grpc") -> ControlClient:
    """A :class:`ControlClient` for ``host:port``; ``key`` defaults to :func:`read_key`."""
    if protocol == "grpc":
        import tritonclient.grpc as client_module
    elif protocol == "http":
        import tritonclient.http as client_module
    else:
        raise ValueError("protocol must be 'grpc' or 'http'")
    return ControlClient(client_module.InferenceServerClient(url), key if key is not None else read_key())


@dataclass(frozen=True)
class Target:
    """A server's gRPC ``host:port`` with the key to send it: what a command line hands to the swap
    functions, which take a :class:`~gtcrec.serving.server.TritonServer` or an address."""

    grpc_url: str
    control_key: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return self.grpc_url


def key_of(target) -> str | None:
    """The key for a control call to ``target``: its own ``control_key`` (a
    :class:`~gtcrec.serving.server.TritonServer` started here) or :func:`read_key`."""
    own = getattr(target, "control_key", None)
    return own if own else read_key()

