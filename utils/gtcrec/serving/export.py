"""Build the serving ensemble and export it as a Triton model repository.

``export_ensemble`` builds ``SessionizeClicks >> TorchScriptTopK >> DecodeTopK`` (see
``gtcrec.serving.operators`` for the request/answer contract), answers a reference request
in-process, then exports with Merlin's ``Ensemble.export`` and ``install_export`` (which notebook 05
calls on its own on-screen ensemble). Two backends:

* ``backend="python"`` (default, runs on the CPU-only Triton of the nvidia-pytriton wheel): the
  whole graph, model included, runs inside Merlin's python-backend ``executor_model``.
* ``backend="pytorch"``: the stock Merlin path for a full Triton (NVIDIA's containers). The model
  step is Merlin's ``PredictPyTorch``, exported as a separate ``pytorch_libtorch`` model that the
  executor calls; export only here (the wheel's Triton has no PyTorch backend). Caveats found
  in Merlin Systems 23.08: the executor sends ragged offsets as INT32 (the traced model must
  accept them), and ``PredictPyTorch`` cannot run in-process on a model that returns a
  ``(scores, codes)`` tuple, so reference outputs always come from the python graph.

The executor model's ``model.py`` is ``gtcrec/serving/executor_model.py`` (``executor="lean"``,
the default, or ``"merlin"``): it loads the same pickled ensemble as Merlin's stock file, runs a
chain of gtcrec operators on plain arrays (lean) or through Merlin's executor, and answers bad
requests with ``bad request: <message>``. ``executor="stock"`` keeps Merlin's own file.

With gtcrec's executor on the python backend, the reference request is also saved as the version's
``warmup_request.json``: the executor answers it before Triton marks the version ready (see
``gtcrec.serving.executor_model``), so a new version's first requests are not slow.

``Ensemble.export()`` swaps operators in place (``PredictPyTorch`` -> its Triton op), so the
reference is computed first. It also writes the executor into version ``1/`` whatever
``version`` says; ``export_ensemble`` exports to a scratch folder and moves the result into
``<out_repo>/<name>/<version>/``.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

import merlin.dtypes as md
from merlin.schema import ColumnSchema, Schema
from merlin.table import TensorTable

from gtcrec.serving import click_log, executor_model
from gtcrec.serving import operators as ops
from gtcrec import order
from gtcrec.serving.client import DEFAULT_MODEL_NAME

REQUEST_COLUMNS = ("session_id", "talk_id", "timestamp")
EXECUTORS = ("lean", "merlin", "stock")


def request_schema() -> Schema:
    """The ensemble's input: raw clicks (strings as BYTES, time as epoch milliseconds)."""
    return Schema([
        ColumnSchema("session_id", dtype=md.string),
        ColumnSchema("talk_id", dtype=md.string),
        ColumnSchema("timestamp", dtype=md.int64),
    ])


@dataclass
class Reference:
    """A request and the in-process answer to it (numpy arrays, as Triton returns them)."""

    request: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def build_ensemble(vocab: Sequence[str], torchscript, max_len: int = 20, k: int = 10,
                   popularity: Sequence[float] | None = None, call: str = "dict",
                   num_threads: int | None = 1, max_clicks: int = ops.MAX_CLICKS, pad_sessions: bool = True,
                   index=None, k_model: int | None = None):
    """The python-backend serving graph as a Merlin ``Ensemble`` (runs in-process too).

    Notebook 05 writes this graph in its cells to teach it; this is the definition the catalog swap,
    the benchmarks and the unit tests use. ``tests/notebooks/test_lessons_match_package.py`` checks
    that both answer the reference request identically.

    ``pad_sessions``: every session reaches the model padded to ``max_len`` (see
    ``SessionizeClicks``), so its answer does not depend on the other sessions of the request.

    ``index``: the retrieval path for large catalogs. ``torchscript`` is then the session encoder
    (:func:`gtcrec.serving.retrieval.trace_query`) and ``index`` a Faiss index (or its file) over the
    items' output vectors; ``FaissTopK`` takes the model's place (see its docstring), returning
    ``k_model`` candidates (default ``k + max_len``). A session's clicked talks are removed from the
    candidates and the popularity ranking fills what runs short, so a session with many clicked talks
    among its best candidates is answered alike by two graphs only when they return as many: give the
    retrieval graph the exact graph's ``K`` to compare the two."""
    from merlin.systems.dag import Ensemble

    if index is None:
        model = ops.TorchScriptTopK(torchscript, call=call, num_threads=num_threads)
    else:  # the retrieval path: ``torchscript`` is the session encoder, ``index`` the items' Faiss index
        model = ops.FaissTopK(torchscript, index, k_model=min(k_model or k + max_len, len(vocab)),
                              num_threads=num_threads)
    _check_k(model.k_model, k, max_len)
    graph = (list(REQUEST_COLUMNS)
             >> ops.SessionizeClicks(vocab, max_len=max_len, max_clicks=max_clicks, pad=pad_sessions) >> model
             >> ops.DecodeTopK(vocab, k=k, popularity=popularity))
    return Ensemble(graph, request_schema())


def choose_backend(backend: str = "auto", tritonserver=None) -> tuple[str, str]:
    """``(backend, why)``: ``"auto"`` picks ``"pytorch"`` (stock ``PredictPyTorch``) when the
    tritonserver that ``TritonServer`` would start has the PyTorch backend, else ``"python"``.
    ``"python"`` / ``"pytorch"`` are returned as given (forced)."""
    from gtcrec.serving.server import TritonServerError, find_tritonserver

    if backend in ("python", "pytorch"):
        return backend, "forced by the caller"
    if backend != "auto":
        raise ValueError("backend must be 'auto', 'python' or 'pytorch'")
    try:
        binary = find_tritonserver(tritonserver)
    except TritonServerError as exc:
        return "python", f"no tritonserver found ({exc}); the python backend runs anywhere"
    if binary.has_backend("pytorch"):
        return "pytorch", f"{binary.executable} ({binary.source}) has the PyTorch backend"
    return "python", (f"{binary.executable} ({binary.source}) has no PyTorch backend "
                      f"(backends: {', '.join(binary.backends()) or 'none'})")


def graph_table(ensemble):
    """The serving graph as a table: one row per operator with the columns it reads and writes."""
    from merlin.dag import postorder_iter_nodes
    from merlin.dag.ops.selection import SelectionOp

    rows = []
    for node in postorder_iter_nodes(ensemble.graph.output_node, flatten_subgraphs=True):
        if isinstance(node.op, SelectionOp) and not node.parents_with_dependencies:
            continue
        doc = (type(node.op).__doc__ or "").strip().split("\n\n")[0]
        reads = node.input_schema.column_names
        writes = [c for c in node.output_schema.column_names if c not in reads]
        rows.append({"operator": type(node.op).__name__, "reads": ", ".join(reads),
                     "writes": ", ".join(writes), "does": " ".join(doc.split())})
    return pd.DataFrame(rows, index=pd.RangeIndex(1, len(rows) + 1, name="step"))


def schema_table(schema, rows: str = "n_clicks") -> pd.DataFrame:
    """Columns of a request (``rows="n_clicks"``) or answer (``rows="n_sessions"``) schema, with
    their Triton datatypes and shapes."""
    triton = {"str": "BYTES", "object": "BYTES", "int64": "INT64", "float32": "FP32"}
    out = []
    for col in schema:
        dims = col.shape.dims
        shape = f"({rows},)" if dims is None or len(dims) <= 1 else f"({rows}, {dims[1].max})"
        out.append({"column": col.name, "triton dtype": triton.get(col.dtype.name, col.dtype.name),
                    "shape": shape})
    return pd.DataFrame(out)


def _check_k(k_model: int, k: int, max_len: int) -> None:
    import warnings

    if k_model < k:
        raise ValueError(f"the model returns {k_model} candidates, fewer than k={k}")
    if k_model < k + max_len:
        warnings.warn(f"the model returns {k_model} candidates; removing up to {max_len} clicked "
                      f"talks can leave fewer than k={k}, and the fallback fills the gap. Trace it "
                      f"with top_k >= k + max_len = {k + max_len} to avoid that.", stacklevel=3)


def build_pytorch_backend_ensemble(vocab: Sequence[str], torchscript, max_len: int = 20, k: int = 10,
                                   popularity: Sequence[float] | None = None, max_clicks: int = ops.MAX_CLICKS,
                                   pad_sessions: bool = True):
    """The same graph with Merlin's stock ``PredictPyTorch`` (for a Triton with the PyTorch backend).

    Export only: this graph cannot answer in-process (``PredictPyTorch`` indexes a single output
    tensor; our model returns a tuple)."""
    from merlin.systems.dag import Ensemble
    from merlin.systems.dag.ops.pytorch import PredictPyTorch

    probe = ops.TorchScriptTopK(torchscript)  # loads the TorchScript and measures K
    _check_k(probe.k_model, k, max_len)
    kk = probe.k_model
    in_schema = Schema([ColumnSchema(ops.ITEM_LIST, dtype=md.int64, is_list=True, is_ragged=True)])
    out_schema = Schema([ColumnSchema(ops.TOPK_SCORES, dtype=md.float32, dims=(None, kk)),
                         ColumnSchema(ops.TOPK_CODES, dtype=md.int64, dims=(None, kk))])
    pre = list(REQUEST_COLUMNS) >> ops.SessionizeClicks(vocab, max_len=max_len, max_clicks=max_clicks,
                                                        pad=pad_sessions)
    predict = pre[[ops.ITEM_LIST]] >> PredictPyTorch(probe.model, in_schema, out_schema)
    post = (predict + pre[[ops.SESSIONS, ops.CLICKED, ops.MODEL_ROW]]) >> ops.DecodeTopK(
        vocab, k=k, popularity=popularity)
    return Ensemble(post, request_schema())


def example_clicks(vocab: Sequence[str], n_sessions: int = 5, max_clicks: int = 8, seed: int = 0,
                   unknown_session: bool = True) -> pd.DataFrame:
    """A small, shuffled clicks table (contract columns) for reference requests and tests.

    Includes a session of unknown talks only (fallback), unknown talks inside sessions,
    repeated talks, sessions longer than typical ``max_len`` values when ``max_clicks`` is
    large, and equal timestamps."""
    rng = np.random.default_rng(seed)
    vocab = list(vocab)
    rows = []
    base = pd.Timestamp("2024-03-18T09:00:00")
    for s in range(n_sessions):
        n = int(rng.integers(1, max_clicks + 1))
        for j in range(n):
            talk = vocab[int(rng.integers(len(vocab)))] if rng.random() > 0.15 else f"UNKNOWN{int(rng.integers(99))}"
            rows.append((f"sess-{seed}-{s}", talk, base + pd.Timedelta(minutes=int(rng.integers(0, 600)))))
    if unknown_session:
        rows += [(f"sess-{seed}-unknown", f"NOPE{j}", base + pd.Timedelta(minutes=j)) for j in range(3)]
    df = pd.DataFrame(rows, columns=list(REQUEST_COLUMNS))
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def reference_outputs(ensemble, request: dict[str, np.ndarray]) -> Reference:
    """Answer ``request`` (arrays as sent to Triton) in-process with ``ensemble``."""
    import time

    started = time.perf_counter()
    table = ensemble.transform(TensorTable({k: np.asarray(v) for k, v in request.items()}))
    seconds = time.perf_counter() - started
    outputs = {name: np.asarray(col.values) for name, col in table.items()}
    return Reference(request=dict(request), outputs=outputs, seconds=seconds)


def export_ensemble(vocab: Sequence[str], torchscript_path, out_repo, max_len: int = 20, k: int = 10,
                    popularity: Sequence[float] | None = None, name: str = DEFAULT_MODEL_NAME,
                    version: int = 1, backend: str = "python", request: dict | pd.DataFrame | None = None,
                    call: str = "dict", num_threads: int | None = 1, self_contained: bool = False,
                    instance_count: int | None = None, overwrite: bool = False, executor: str = "lean",
                    max_clicks: int = ops.MAX_CLICKS, dynamic_batching: bool = False,
                    max_batch_size: int = 32, batch_delay_us: int = 500, pad_sessions: bool = True,
                    index=None, k_model: int | None = None):
    """Build, answer a reference request in-process, export. Returns ``(ensemble, reference)``.

    Parameters
    ----------
    vocab: talk ids in catalog order (the training vocabulary: code = position + 3).
    torchscript_path: the traced top-k model (see ``TorchScriptTopK``).
    out_repo: Triton model repository; the model lands in ``out_repo/name/version``.
    max_len: clicks kept per session (the last ones), as in training.
    k: talks answered per session (fixed at export).
    popularity: per vocabulary entry, for the fallback ranking (``None``: catalog order).
    backend: ``"python"`` (runs anywhere) or ``"pytorch"`` (stock ``PredictPyTorch``; needs a
        Triton with the PyTorch backend).
    request: clicks (DataFrame or request arrays) for the reference; default ``example_clicks``.
    self_contained: pickle the gtcrec operators by value so the server needs no ``gtcrec``
        install (only Merlin Systems and torch).
    instance_count: CPU instances of the executor model (Merlin writes KIND_AUTO, one instance:
        requests are then served one at a time).
    overwrite: replace an existing ``out_repo/name/version``.
    executor: ``"lean"`` (default), ``"merlin"`` or ``"stock"``; see the module docstring.
    max_clicks: larger requests are refused (``bad request``).
    pad_sessions: pad every session to ``max_len`` before the model (see ``build_ensemble``).
    index: the retrieval path (see ``build_ensemble``): ``torchscript_path`` is the session encoder;
        ``k_model``: the candidates it returns (default ``k + max_len``).
    dynamic_batching: let Triton queue requests (up to ``batch_delay_us``) and hand up to
        ``max_batch_size`` of them to the executor at once; their sessions share ONE model call.
        Needs ``executor="lean"``. Requests then carry a leading batch dimension of 1: inputs
        ``[1, n_clicks]``, answers ``[1, n_sessions(, k)]`` (``client.infer_arrays(..., batched=True)``).

    The returned ``ensemble`` is the python graph: it still answers in-process after export.
    """
    from gtcrec.serving.client import request_arrays

    if backend not in ("python", "pytorch"):
        raise ValueError("backend must be 'python' or 'pytorch'")
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}")
    if index is not None and backend != "python":
        raise ValueError("the retrieval path (index) runs on the python backend")
    if dynamic_batching and (executor != "lean" or backend != "python"):
        raise ValueError("dynamic_batching needs executor='lean' and backend='python'")
    out_repo = Path(out_repo).resolve()
    target = out_repo / name / str(int(version))
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (pass overwrite=True to replace it)")

    ensemble = build_ensemble(vocab, torchscript_path, max_len=max_len, k=k, popularity=popularity,
                              call=call, num_threads=num_threads, max_clicks=max_clicks, pad_sessions=pad_sessions,
                              index=index, k_model=k_model)
    if request is None:
        request = example_clicks(vocab)
    if isinstance(request, pd.DataFrame):
        request = request_arrays(request)
    reference = reference_outputs(ensemble, request)

    if backend == "python":
        to_export = ensemble
    else:
        to_export = build_pytorch_backend_ensemble(vocab, torchscript_path, max_len=max_len, k=k,
                                                   popularity=popularity, max_clicks=max_clicks,
                                                   pad_sessions=pad_sessions)
    reference.extra["backend"] = backend

    with tempfile.TemporaryDirectory(prefix="gtcrec-export-") as tmp:
        with pickled_by_value(self_contained):
            executor_config, node_configs = to_export.export(tmp, name=name)
        executor_config = install_export(tmp, out_repo, name=name, version=version, backend=backend,
                                         request=request, instance_count=instance_count, executor=executor,
                                         dynamic_batching=dynamic_batching, max_batch_size=max_batch_size,
                                         batch_delay_us=batch_delay_us,
                                         ensemble=ensemble if backend == "python" else None)
        reference.extra["configs"] = [executor_config] + list(node_configs)
        reference.extra["executor"] = executor
    return ensemble, reference


def write_lean_chain(ensemble, version_dir) -> Path | None:
    """Save the graph's operators as their Merlin-free cores (:func:`gtcrec.serving.operators.lean_copy`) in
    ``version_dir/lean_chain.pkl``, with the request's input names: the lean executor then answers without
    importing Merlin. Pickled by value (the server needs no gtcrec). ``None`` (nothing written) when the graph is
    not a chain of gtcrec's own operators: the executor then loads the ensemble as before."""
    import cloudpickle

    chain = executor_model.lean_chain(ensemble)
    if not chain or any(type(op) not in ops.CORES for op in chain):
        return None
    payload = {"inputs": list(ensemble.input_schema.column_names), "names": [type(op).__name__ for op in chain],
               "ops": [ops.lean_copy(op) for op in chain]}
    path = Path(version_dir) / executor_model.LEAN_CHAIN_FILE
    with pickled_by_value():
        path.write_bytes(cloudpickle.dumps(payload))
    return path


@contextlib.contextmanager
def pickled_by_value(active: bool = True):
    """While inside, cloudpickle writes gtcrec's operators and the click order they use by value, so that what it
    pickles loads where gtcrec is not installed (a server's python backend)."""
    import cloudpickle

    modules = (ops, order) if active else ()
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)


def install_export(merlin_dir, out_repo, name: str = DEFAULT_MODEL_NAME, version: int = 1,
                   backend: str = "python", request: dict | None = None, instance_count: int | None = None,
                   executor: str = "lean", dynamic_batching: bool = False, max_batch_size: int = 32,
                   batch_delay_us: int = 500, overwrite: bool = True, ensemble=None):
    """Move what ``Ensemble.export(merlin_dir, name=name)`` wrote into ``out_repo/<model>/<version>/``
    and adapt it for serving; returns the executor model's config.

    Merlin writes the executor into ``1/`` and the operators' artifacts into ``<version>/`` whatever
    ``version`` says: everything is gathered into ``<version>/``. The config gets
    ``instance_count`` CPU instances, the ``executor`` parameter (``"lean"`` / ``"merlin"`` use gtcrec's
    executor file, ``"stock"`` keeps Merlin's) and, with ``dynamic_batching``, Triton's dynamic
    batching with ragged inputs. With gtcrec's executor on the python backend, ``request`` (arrays as
    sent to Triton) is saved as the version's warm-up request. ``ensemble`` (the exported one), with the lean
    executor on the python backend: its operators are also saved as their Merlin-free cores
    (:func:`write_lean_chain`), which the executor loads instead of the ensemble. ``merlin_dir`` is consumed."""
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}")
    if dynamic_batching and (executor != "lean" or backend != "python"):
        raise ValueError("dynamic_batching needs executor='lean' and backend='python'")
    merlin_dir, out_repo = Path(merlin_dir), Path(out_repo).resolve()
    target = out_repo / name / str(int(version))
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (pass overwrite=True to replace it)")
    executor_config = _edit_config(merlin_dir / name / "config.pbtxt", instance_count,
                                   None if executor == "stock" else executor,
                                   (max_batch_size, batch_delay_us) if dynamic_batching else None)
    if executor != "stock":  # gtcrec's executor, and the click log it imports from its own folder
        shutil.copyfile(Path(executor_model.__file__), merlin_dir / name / "1" / "model.py")
        shutil.copyfile(Path(click_log.__file__), merlin_dir / name / "1" / executor_model.CLICK_LOG_FILE)
    out_repo.mkdir(parents=True, exist_ok=True)
    for model_dir in sorted(merlin_dir.iterdir()):
        dest_model = out_repo / model_dir.name
        dest_model.mkdir(exist_ok=True)
        shutil.copy2(model_dir / "config.pbtxt", dest_model / "config.pbtxt")
        # Merlin writes the executor into 1/ (and artifacts into <version>/): gather all in <version>/
        dest = dest_model / str(int(version))
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(model_dir / "1"), str(dest))
        if executor != "stock" and backend == "python" and request is not None:  # gtcrec's executor warms up on it
            executor_model.write_warmup_request(dest, request)
        if executor == "lean" and backend == "python" and ensemble is not None and model_dir.name == name:
            write_lean_chain(ensemble, dest)
        for extra in model_dir.iterdir():
            if extra.name not in ("1", "config.pbtxt"):
                shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
    return executor_config


def _edit_config(config_path: Path, instance_count: int | None = None, executor: str | None = None,
                 batching: tuple[int, int] | None = None):
    """Set ``instance_count`` CPU instances, the ``executor`` parameter and dynamic batching
    (``(max_batch_size, max_queue_delay_us)``: ragged inputs may be batched); returns the config."""
    import tritonclient.grpc.model_config_pb2 as model_config
    from google.protobuf import text_format

    config = text_format.Parse(config_path.read_text(), model_config.ModelConfig())
    if batching:
        config.max_batch_size = int(batching[0])
        for inp in config.input:
            inp.allow_ragged_batch = True
        config.dynamic_batching.max_queue_delay_microseconds = int(batching[1])
    if instance_count:
        del config.instance_group[:]
        config.instance_group.append(model_config.ModelInstanceGroup(
            kind=model_config.ModelInstanceGroup.Kind.KIND_CPU, count=int(instance_count)))
    if executor:
        config.parameters[executor_model.PARAMETER].string_value = executor
    config_path.write_text(text_format.MessageToString(config))
    return config


def lean_transform(ensemble, request: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Answer ``request`` in-process the way the lean executor does (``None`` graph: not a chain)."""
    chain = executor_model.lean_chain(ensemble)
    if chain is None:
        raise ValueError("this graph is not a chain of operators with transform_arrays")
    out = executor_model.run_chain(chain, {k: np.asarray(v) for k, v in request.items()})
    return {name: out[name] for name in ensemble.output_schema.column_names}


def lean_transform_batch(ensemble, requests: Sequence[dict[str, np.ndarray]]) -> list:
    """Answer several requests in-process the way the dynamically batched executor does (one model
    call for all): a list of answer dicts, or of the exception a request raised."""
    chain = executor_model.lean_chain(ensemble)
    if chain is None:
        raise ValueError("this graph is not a chain of operators with transform_arrays")
    names = ensemble.output_schema.column_names
    results = executor_model.run_batched(chain, [{k: np.asarray(v) for k, v in r.items()} for r in requests])
    return [r if isinstance(r, Exception) else {n: r[n] for n in names} for r in results]
