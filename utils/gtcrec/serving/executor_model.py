"""The Triton python-backend model that runs the exported Merlin ensemble (copied as ``model.py``).

It replaces Merlin Systems' stock ``executor_model`` file and loads the same thing: the pickled
``Ensemble`` and the artifacts of its operators, from ``<version>/ensemble``. It then answers in
one of two ways, set by the ``executor`` parameter of ``config.pbtxt``:

* ``lean`` (default): when the graph is a chain of operators that all offer
  ``transform_arrays(dict) -> dict`` (the gtcrec operators do), each request's input tensors go
  through that chain as plain numpy arrays and the answer goes straight back. This skips the
  per-call column selection, schema and format work of Merlin's ``LocalExecutor`` (about 0.7 ms
  per request on 2 CPU cores, more than the rest of the graph without the model). Any other
  graph (e.g. one with ``PredictPyTorch``, which calls a second Triton model) falls back to:
* ``merlin``: ``Ensemble.transform(..., runtime=TritonExecutorRuntime())``, as the stock file does.

Dynamic batching (``max_batch_size > 0`` in ``config.pbtxt``, lean executor only): Triton hands
``execute`` several queued requests at once. Each is sessionized on its own; their model inputs
are concatenated into ONE model call (the costly step), whose outputs are split back per request
for the rest of the chain (``run_batched``). Requests then carry a leading batch dimension of 1
(inputs ``[1, n_clicks]``, answers ``[1, n_sessions, ...]``).

Errors: an exception that carries ``bad_request = True`` (``gtcrec.serving.operators.BadRequest``)
is returned to the client as ``bad request: <message>`` (status INVALID_ARG: gRPC
INVALID_ARGUMENT, HTTP 400); anything else as ``internal error: <type>: <message>`` (INTERNAL),
with the traceback in the server log. One failing request
never fails the others of the same ``execute`` call.

Warm-up: a new copy of the model answers its first requests slowly (TorchScript optimises a
traced model during its first calls: 80-180 ms per request for the first two requests of each
instance on 2 CPU cores, against ~4 ms afterwards). ``initialize`` therefore answers the version's
own reference request (``<version>/warmup_request.json``, written by the export) and parts of it
of other sizes, a few times, before it returns: Triton marks a version READY, and routes requests
to it, only once every instance is initialised, so no client request meets a cold model. A
warm-up request that fails makes the load fail (the version cannot answer): Triton keeps serving
the previous version. Without the file (older exports) there is no warm-up.

Click log (opt-in): when ``$GTCREC_CLICK_LOG`` names a folder, each instance keeps a
``ClickLog`` (:mod:`gtcrec.serving.click_log`) and hands it every answered request; only requests that
carry the app's logging key are logged.

The file imports nothing from ``gtcrec`` but its click log, which the export copies next to it (a
self-contained export runs without gtcrec), and can be imported outside Triton (for ``lean_chain`` /
``run_chain``).
"""
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (export, tests)
    pb_utils = None

# The click log (gtcrec.serving.click_log): in a served version, its copy next to this file, CLICK_LOG_FILE (the version
# folder is on sys.path inside the python backend); imported from the package elsewhere (export, tests)
CLICK_LOG_FILE = "gtcrec_click_log.py"
try:
    from gtcrec_click_log import CLICK_LOG_ENV, CLICK_LOG_INPUTS, click_log_from_env, segment_name
except ImportError:
    from gtcrec.serving.click_log import CLICK_LOG_ENV, CLICK_LOG_INPUTS, click_log_from_env, segment_name

PARAMETER = "executor"
LEAN_CHAIN_FILE = "lean_chain.pkl"  # the operators as their Merlin-free cores (gtcrec.serving.export.write_lean_chain)
MODES = ("lean", "merlin")
WARMUP_FILE = "warmup_request.json"  # in the version folder, next to ensemble/
WARMUP_ROUNDS = 2  # each warm-up request is answered this many times


def write_warmup_request(version_dir, request) -> Path:
    """Save request arrays (session_id, talk_id as bytes or str; timestamp) as the warm-up request of
    an exported version."""
    def text(v):
        return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)

    doc = {name: ([int(x) for x in np.asarray(values).ravel()] if name == "timestamp"
                  else [text(x) for x in np.asarray(values, dtype=object).ravel()])
           for name, values in request.items()}
    path = Path(version_dir) / WARMUP_FILE
    path.write_text(json.dumps(doc))
    return path


def read_warmup_request(version_dir):
    """The saved warm-up request as request arrays (strings as bytes), or ``None`` without the file."""
    path = Path(version_dir) / WARMUP_FILE
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    return {name: (np.asarray(values, dtype=np.int64) if name == "timestamp"
                   else np.array([v.encode("utf-8", "surrogateescape") for v in values], dtype=object))
            for name, values in doc.items()}


def warmup_requests(request):
    """The request, and requests of its first 1, 2 and 4 sessions: the model is then called with
    several batch sizes (a traced model is optimised per input shape it sees)."""
    sessions = np.asarray(request["session_id"], dtype=object)
    order = list(dict.fromkeys(sessions.tolist()))
    out = [request]
    for n in (1, 2, 4):
        if n < len(order):
            keep = np.isin(sessions, np.array(order[:n], dtype=object))
            out.append({name: np.asarray(values)[keep] for name, values in request.items()})
    return out


def lean_chain(ensemble):
    """The operators of ``ensemble`` in order, if its graph is a chain of operators that all have
    ``transform_arrays``; else ``None`` (use Merlin's executor)."""
    from merlin.dag import postorder_iter_nodes
    from merlin.dag.ops.selection import SelectionOp

    chain = []
    for node in postorder_iter_nodes(ensemble.graph.output_node, flatten_subgraphs=True):
        if isinstance(node.op, SelectionOp) and not node.parents_with_dependencies:
            continue  # the request columns
        parents = node.parents_with_dependencies
        if len(parents) != 1 or not hasattr(node.op, "transform_arrays"):
            return None
        if chain and parents[0].op is not chain[-1]:
            return None
        chain.append(node.op)
    return chain or None


def run_chain(chain, arrays):
    """Request arrays -> answer arrays through the operators' ``transform_arrays``."""
    for op in chain:
        arrays = op.transform_arrays(arrays)
    return arrays


def model_step(chain):
    """Index of the model operator in a lean chain (the one with ``predict`` and ``input_col``)."""
    found = [i for i, op in enumerate(chain) if hasattr(op, "predict") and hasattr(op, "input_col")]
    if len(found) != 1:
        raise ValueError(f"dynamic batching needs exactly one model operator in the chain, found {len(found)}")
    return found[0]


def run_batched(chain, batch):
    """Answer several requests with ONE call of the model operator.

    ``batch``: a list of request arrays. Returns one entry per request: its answer arrays, or the
    exception it raised (a bad request does not fail the others)."""
    i = model_step(chain)
    model = chain[i]
    results = [None] * len(batch)
    ready = []
    for j, arrays in enumerate(batch):
        try:
            ready.append((j, run_chain(chain[:i], arrays)))
        except Exception as exc:  # noqa: BLE001 - reported for this request only
            results[j] = exc
    if not ready:
        return results
    values_name, offsets_name = f"{model.input_col}__values", f"{model.input_col}__offsets"
    values = [np.asarray(part[values_name]) for _, part in ready]
    offsets = [np.asarray(part[offsets_name], dtype=np.int64) for _, part in ready]
    shifts = np.cumsum([0] + [len(v) for v in values[:-1]])
    merged = {values_name: np.concatenate(values),
              offsets_name: np.concatenate([np.zeros(1, np.int64)] + [o[1:] + s for o, s in zip(offsets, shifts)])}
    try:
        out = model.transform_arrays(merged)
    except Exception as exc:  # noqa: BLE001 - the model failed for all of them
        for j, _ in ready:
            results[j] = exc
        return results
    produced = [name for name in out if name not in merged]
    row = 0
    for (j, part), offs in zip(ready, offsets):
        n = len(offs) - 1
        part = dict(part)
        for name in produced:
            part[name] = out[name][row:row + n]
        row += n
        try:
            results[j] = run_chain(chain[i + 1:], part)
        except Exception as exc:  # noqa: BLE001
            results[j] = exc
    return results


def _model_repository(args):
    repo = args["model_repository"]
    # some Triton releases pass the path of model.py instead of the model's folder
    return Path(repo).parent if repo.endswith(".py") else Path(repo)


def _error(message, code):
    """A TritonError with a status code where the backend supports codes (gRPC INVALID_ARGUMENT
    for a bad request, as Triton's own input checks answer)."""
    code_value = getattr(pb_utils.TritonError, code, None)
    if code_value is None:
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code_value)


def load_lean_chain(version_dir):
    """``(operators, input names, operator names)`` from a version's lean chain file (written at export next to
    ``ensemble/``: the graph's operators as their Merlin-free cores), their models and indexes loaded; ``None``
    without the file. Nothing of Merlin is imported: a python-backend process starts in a fraction of the time."""
    import pickle

    path = Path(version_dir) / LEAN_CHAIN_FILE
    if not path.is_file():
        return None
    payload = pickle.loads(path.read_bytes())
    for op in payload["ops"]:
        if hasattr(op, "load_artifacts"):
            op.load_artifacts(str(Path(version_dir) / "ensemble"))
    return payload["ops"], list(payload["inputs"]), list(payload["names"])


class TritonPythonModel:
    def initialize(self, args):
        version_dir = _model_repository(args) / str(args["model_version"])
        path = version_dir / "ensemble"
        config = json.loads(args["model_config"])
        mode = config.get("parameters", {}).get(PARAMETER, {}).get("string_value", "lean")
        if mode not in MODES:
            raise ValueError(f"parameter {PARAMETER!r} must be one of {MODES}, got {mode!r}")
        lean = load_lean_chain(version_dir) if mode == "lean" else None
        if lean is not None:
            self.ensemble = None
            self.chain, self.input_names, names = lean
        else:
            from merlin.dag import postorder_iter_nodes
            from merlin.systems.dag import Ensemble

            self.ensemble = Ensemble.load(str(path))
            for node in postorder_iter_nodes(self.ensemble.graph.output_node, flatten_subgraphs=True):
                node.op.load_artifacts(str(path))
            self.chain = lean_chain(self.ensemble) if mode == "lean" else None
            self.input_names = list(self.ensemble.input_schema.column_names)
            names = [type(op).__name__ for op in self.chain or []]
        self.mode = "lean" if self.chain else "merlin"
        self.batched = int(config.get("max_batch_size", 0)) > 0
        if self.batched:
            if not self.chain:
                raise ValueError("dynamic batching (max_batch_size > 0) needs the lean executor and a chain graph")
            model_step(self.chain)
        self.outputs = [(out["name"], pb_utils.triton_string_to_numpy(out["data_type"]))
                        for out in config["output"]]
        name = f"{args['model_name']} v{args['model_version']}"
        print(f"[gtcrec executor] {name}: {self.mode} executor "
              f"({' >> '.join(names) if self.chain else 'Merlin LocalExecutor'})"
              f"{', dynamic batching' if self.batched else ''}"
              f"{'; its operators loaded without Merlin (' + LEAN_CHAIN_FILE + ')' if lean else ''}",
              file=sys.stderr, flush=True)
        self.warmup_ms = self.warm_up(path.parent, name)
        self.click_log = None
        if os.environ.get(CLICK_LOG_ENV, "").strip():
            if not set(CLICK_LOG_INPUTS) <= set(self.input_names):
                print(f"[gtcrec executor] {name}: ${CLICK_LOG_ENV} is set but the inputs are not "
                      f"{', '.join(CLICK_LOG_INPUTS)}: no click log", file=sys.stderr, flush=True)
            else:
                self.click_log = click_log_from_env(args.get("model_instance_name", args["model_name"]),
                                                    args["model_version"])
                log = self.click_log
                print(f"[gtcrec executor] {name}: logging clicks to {log.folder} as "
                      f"{segment_name(log.prefix, 0).replace('000000', 'NNNNNN')} (a segment every "
                      f"{log.max_seconds:g} s or {log.max_records} clicks)", file=sys.stderr, flush=True)

    def warm_up(self, version_dir, name=""):
        """Answer the version's warm-up request (and parts of it) ``WARMUP_ROUNDS`` times; returns the
        milliseconds of each call (empty: no warm-up file, or not the lean executor). Raises when a
        call fails, which fails the load."""
        request = read_warmup_request(version_dir)
        if request is None or not self.chain:
            why = "no warm-up request" if request is None else "the merlin executor is not warmed up"
            print(f"[gtcrec executor] {name}: {why}", file=sys.stderr, flush=True)
            return []
        times = []
        for _ in range(WARMUP_ROUNDS):
            for part in warmup_requests(request):
                started = time.perf_counter()
                try:
                    if self.batched:
                        result = run_batched(self.chain, [part])[0]
                        if isinstance(result, Exception):
                            raise result
                    else:
                        run_chain(self.chain, dict(part))
                except Exception as exc:
                    raise RuntimeError(f"warm-up request failed ({type(exc).__name__}: {exc}); this version "
                                       "cannot answer its own reference request") from exc
                times.append((time.perf_counter() - started) * 1e3)
        print(f"[gtcrec executor] {name}: warmed up with {len(times)} calls in {sum(times):.0f} ms "
              f"(first {times[0]:.1f} ms, last {times[-1]:.1f} ms)", file=sys.stderr, flush=True)
        return times

    def _arrays(self, request):
        arrays = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:  # Triton checks inputs already; keep a clear message anyway
                raise KeyError(f"missing input {name!r}")
            arr = tensor.as_numpy()
            arrays[name] = arr.reshape(-1) if self.batched else arr  # [1, n] -> [n]
        return arrays

    def _response(self, out):
        return pb_utils.InferenceResponse([
            pb_utils.Tensor(name, np.ascontiguousarray(out[name][None] if self.batched else out[name])
                            .astype(dtype, copy=False))
            for name, dtype in self.outputs])

    def _log(self, request, arrays=None):
        """Queue the clicks of an answered request (its arrays, or read from ``request``) when its
        parameters carry the logging key, else count them; never fails, never waits."""
        log = self.click_log
        if log is None:
            return
        try:
            if arrays is None:
                arrays = self._arrays(request)
            log.put_request(request.parameters(), arrays["session_id"], arrays["talk_id"], arrays["timestamp"])
        except Exception:  # noqa: BLE001 - an answered request never fails because of its log
            log.requests_dropped += 1

    def _lean(self, request):
        arrays = self._arrays(request)
        response = self._response(run_chain(self.chain, arrays))
        self._log(request, arrays)
        return response

    def _merlin(self, request):
        from merlin.systems.dag.runtimes.triton import TritonExecutorRuntime
        from merlin.systems.triton.conversions import (tensor_table_to_triton_response,
                                                       triton_request_to_tensor_table)

        inputs = triton_request_to_tensor_table(request, self.ensemble.input_schema)
        outputs = self.ensemble.transform(inputs, runtime=TritonExecutorRuntime())
        response = tensor_table_to_triton_response(outputs, self.ensemble.output_schema)
        self._log(request)
        return response

    @staticmethod
    def _failure(exc):
        cause = exc
        while getattr(cause, "__cause__", None) is not None and not getattr(cause, "bad_request", False):
            cause = cause.__cause__  # Merlin wraps operator errors
        if getattr(cause, "bad_request", False):
            error = _error(f"bad request: {cause}", "INVALID_ARG")
        else:
            error = _error(f"internal error: {type(exc).__name__}: {exc}", "INTERNAL")
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        return pb_utils.InferenceResponse(output_tensors=[], error=error)

    def _execute_batched(self, requests):
        batch, failed = [], {}
        for j, request in enumerate(requests):
            try:
                batch.append((j, self._arrays(request)))
            except Exception as exc:  # noqa: BLE001
                failed[j] = exc
        results = dict(zip([j for j, _ in batch], run_batched(self.chain, [a for _, a in batch])))
        arrays_of = dict(batch)
        results.update(failed)
        responses = []
        for j in range(len(requests)):
            result = results[j]
            if isinstance(result, Exception):
                responses.append(self._failure(result))
                continue
            try:
                responses.append(self._response(result))
            except Exception as exc:  # noqa: BLE001
                responses.append(self._failure(exc))
                continue
            self._log(requests[j], arrays_of[j])
        return responses

    def execute(self, requests):
        if self.batched:
            return self._execute_batched(requests)
        answer = self._lean if self.chain else self._merlin
        responses = []
        for request in requests:
            try:
                responses.append(answer(request))
            except Exception as exc:  # noqa: BLE001 - every failure becomes this request's error
                responses.append(self._failure(exc))
        return responses

    def finalize(self):
        """Triton unloads this version (or stops): write the clicks still queued."""
        log = getattr(self, "click_log", None)
        if log is not None:
            self.click_log = None
            stats = log.close()
            print(f"[gtcrec executor] click log {log.prefix} closed: {stats['clicks_logged']} clicks in "
                  f"{stats['segments']} segments, {stats['clicks_dropped']} dropped, {stats['clicks_lost']} lost "
                  "to write errors", file=sys.stderr, flush=True)
