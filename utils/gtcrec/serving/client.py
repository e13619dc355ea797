"""Client side of the served recommender: clicks DataFrame -> Triton inputs -> answer DataFrame.

Works with ``tritonclient.http`` and ``tritonclient.grpc`` clients. The request contract is in
``gtcrec.serving.operators``: ``session_id`` and ``talk_id`` as BYTES, ``timestamp`` as INT64
epoch milliseconds (datetime64 and ISO-8601 text are converted; naive times are taken as UTC;
numbers are taken as milliseconds already).

A server with a click log logs only the requests the app vouches for: :func:`log_parameters` builds
the Triton request parameters that carry the logging key and the attendee's id (``parameters=`` of
tritonclient's ``infer``). Probes, load tests and watchers send none and are never logged.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

DEFAULT_MODEL_NAME = "executor_model"
INPUTS = ("session_id", "talk_id", "timestamp")
OUTPUTS = ("session_ids", "talk_ids", "scores")
_TRITON_DTYPES = {"session_id": "BYTES", "talk_id": "BYTES", "timestamp": "INT64"}


def _bytes_array(values) -> np.ndarray:
    return np.array([v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values], dtype=object)


def timestamps_ms(values) -> np.ndarray:
    """Epoch milliseconds (int64) from datetime64 / tz-aware / ISO text / numeric values.

    Missing values (NaT, NaN, None) raise ``ValueError``: a click without a time cannot be ordered."""
    s = pd.Series(values)
    if s.isna().any():
        raise ValueError(f"timestamp has {int(s.isna().sum())} missing values (NaT/NaN/None); "
                         "every click needs a time")
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        if getattr(s.dt, "tz", None) is not None:
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        return (s.values.astype("datetime64[ns]").astype(np.int64) // 1_000_000).astype(np.int64)
    if pd.api.types.is_numeric_dtype(s.dtype):
        return s.to_numpy().astype(np.int64)
    parsed = pd.to_datetime(s, utc=True).dt.tz_localize(None)
    return (parsed.values.astype("datetime64[ns]").astype(np.int64) // 1_000_000).astype(np.int64)


def request_arrays(clicks: pd.DataFrame) -> dict[str, np.ndarray]:
    """The three request arrays from a clicks table (columns session_id, talk_id, timestamp)."""
    missing = [c for c in INPUTS if c not in clicks.columns]
    if missing:
        raise KeyError(f"clicks lack columns {missing}")
    return {
        "session_id": _bytes_array(clicks["session_id"].to_numpy()),
        "talk_id": _bytes_array(clicks["talk_id"].to_numpy()),
        "timestamp": timestamps_ms(clicks["timestamp"]),
    }


def log_parameters(log_key: str | None, client_id: str = "") -> dict | None:
    """The request parameters that make a logging server log a request: the logging key and the
    client (attendee) id the app answers for. None without a key: the request is answered, not logged."""
    from gtcrec.serving.click_log import CLIENT_PARAMETER, LOG_KEY_PARAMETER

    return {LOG_KEY_PARAMETER: log_key, CLIENT_PARAMETER: str(client_id)} if log_key else None


def _module(client):
    name = type(client).__module__
    if name.startswith("tritonclient.grpc"):
        import tritonclient.grpc as mod
    elif name.startswith("tritonclient.http"):
        import tritonclient.http as mod
    else:
        raise TypeError(f"expected a tritonclient http or grpc client, got {type(client)}")
    return mod


def make_inputs(arrays: dict[str, np.ndarray], protocol: str = "grpc", batched: bool = False) -> list:
    """tritonclient ``InferInput`` objects (``protocol`` "http" or "grpc") for the request arrays.

    ``batched``: for a model exported with dynamic batching (inputs get a leading dimension of 1)."""
    if protocol == "grpc":
        import tritonclient.grpc as mod
    elif protocol == "http":
        import tritonclient.http as mod
    else:
        raise ValueError("protocol must be 'http' or 'grpc'")
    inputs = []
    for name in INPUTS:
        arr = np.ascontiguousarray(arrays[name])
        if _TRITON_DTYPES[name] == "BYTES":
            arr = arr.astype(object)
        else:
            arr = arr.astype(np.int64)
        if batched:
            arr = arr.reshape(1, -1)
        inp = mod.InferInput(name, list(arr.shape), _TRITON_DTYPES[name])
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


def make_outputs(protocol: str = "grpc") -> list:
    if protocol == "grpc":
        import tritonclient.grpc as mod

        return [mod.InferRequestedOutput(n) for n in OUTPUTS]
    import tritonclient.http as mod

    return [mod.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS]


# What the python backend answers when the stub process of the instance a request went to is
# gone (killed, crashed): the request never ran, so sending it again is safe.
UNHEALTHY_STUB = "is not healthy"


def is_unhealthy_stub_error(exc: BaseException) -> bool:
    """True for the error of a request routed to a model instance whose stub process died."""
    text = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    return UNHEALTHY_STUB in str(text) and "Stub process" in str(text)


def infer_with_retry(client, model_name: str, inputs: list, retries: int = 1, **kwargs):
    """``client.infer(model_name, inputs, **kwargs)``, sent again (up to ``retries`` times) when it
    failed because the instance it reached lost its stub process (:func:`is_unhealthy_stub_error`).
    A recommendation is idempotent, and Triton routes the new attempt to a free instance; any
    other error is raised at once."""
    for attempt in range(int(retries) + 1):
        try:
            return client.infer(model_name, inputs, **kwargs)
        except Exception as exc:  # noqa: BLE001 - only the unhealthy-stub error is retried
            if attempt >= retries or not is_unhealthy_stub_error(exc):
                raise


def infer_arrays(client, arrays: dict[str, np.ndarray], model_name: str = DEFAULT_MODEL_NAME,
                 model_version: str = "", batched: bool = False, retries: int = 1,
                 parameters: dict | None = None) -> dict[str, np.ndarray]:
    """Send request arrays; return the answer arrays (session_ids, talk_ids, scores).
    ``parameters``: Triton request parameters (:func:`log_parameters` for a request the app vouches for).

    ``batched``: the model was exported with dynamic batching (the batch dimension of 1 is added
    to the request and removed from the answer). ``retries``: times the request is sent again
    when a model instance's stub process died under it (see :func:`infer_with_retry`)."""
    mod = _module(client)
    protocol = "grpc" if mod.__name__.endswith("grpc") else "http"
    result = infer_with_retry(client, model_name, make_inputs(arrays, protocol, batched), retries=retries,
                              model_version=model_version, outputs=make_outputs(protocol), parameters=parameters)
    out = {name: result.as_numpy(name) for name in OUTPUTS}
    return {name: arr[0] for name, arr in out.items()} if batched else out


def to_frame(outputs: dict[str, np.ndarray]) -> pd.DataFrame:
    """Answer arrays -> DataFrame (session_id, rank, talk_id, score), rank from 1, best first.

    A NaN score marks a talk that came from the fallback (popularity), not from the model."""
    sessions = outputs["session_ids"]
    talks = outputs["talk_ids"]
    scores = np.asarray(outputs["scores"], dtype=np.float32)
    n, k = talks.shape if talks.ndim == 2 else (0, 0)

    def text(v):  # ids that are not UTF-8 show their bytes as \x escapes
        return v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v)

    return pd.DataFrame({
        "session_id": np.repeat([text(s) for s in sessions], k) if n else np.array([], dtype=object),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int64), n),
        "talk_id": [text(t) for t in talks.ravel()],
        "score": scores.ravel(),
    })


def recommend(client, clicks: pd.DataFrame, model_name: str = DEFAULT_MODEL_NAME,
              model_version: str = "", retries: int = 1) -> pd.DataFrame:
    """Clicks -> served recommendations as a DataFrame (see ``to_frame``)."""
    if len(clicks) == 0:
        return to_frame({"session_ids": np.array([], dtype=object),
                         "talk_ids": np.empty((0, 0), dtype=object),
                         "scores": np.empty((0, 0), dtype=np.float32)})
    return to_frame(infer_arrays(client, request_arrays(clicks), model_name, model_version, retries=retries))


def split_sessions(clicks: pd.DataFrame, sessions_per_request: int) -> Iterable[pd.DataFrame]:
    """Cut a clicks table into requests of ``sessions_per_request`` whole sessions each."""
    keys = pd.unique(clicks["session_id"])
    for start in range(0, len(keys), sessions_per_request):
        chosen = set(keys[start:start + sessions_per_request])
        yield clicks[clicks["session_id"].isin(chosen)]
