"""Transformers4Rec session model over the talks' frozen pre-trained text vectors.

The model reads the list of item codes of a session (``item_id-list``, codes as the ETL writes
them, :mod:`gtcrec.layout`), looks them up in T4R's item table, runs a transformer (GPT-2 with
causal LM by default, or XLNet with masked LM) and scores every code against the SAME table
(``NextItemPredictionTask(weight_tying=True)``). The table is either T4R's own, initialised from the
text vectors and frozen, or an :class:`gtcrec.representation.ItemRepresentation` in its place (text
+ adapter + field vectors + warm residual/bias) with the :class:`~gtcrec.representation.LastClickSkip`
task block. Replacing the text rows (:func:`swap_item_table`) moves the model to a new catalog.

Evaluation follows :mod:`gtcrec.metrics` (the last click given the prefix). T4R keeps the FIRST
``max_len`` items of a longer list and pads a batch to its longest session, so every helper here
keeps the LAST ``max_len`` items and pads each session to ``max_len`` (XLNet's scores would
otherwise depend on the rest of the batch).

Main functions: :func:`build_model`, :func:`describe`, :func:`train`, :func:`score_sessions`,
:func:`swap_item_table`, :func:`save_model` / :func:`load_model` (the serving trace:
:mod:`gtcrec.trace`).
"""
from __future__ import annotations

import glob
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
import torch

from gtcrec.etl import ITEM_LIST as ITEM_COL  # the codes are the ETL's: one definition
from gtcrec.etl import RESERVED as N_RESERVED
from gtcrec.device import bf16_native, get_device  # noqa: F401  (gm.bf16_native, gm.get_device)
from gtcrec.representation import ItemRepresentation, LastClickSkip

# Defaults from measured comparisons (the generator, 1,000 talks, 5 epochs, batch 128, recall@10 of
# the last click): GPT-2 + causal LM 0.675 (lr 1e-3), 0.701 (lr 3e-3); XLNet + masked LM 0.454;
# dropout 0.3 cost 0.13 against 0.1 on ordered synthetic topics; lr 1e-2 diverged.
DEFAULTS: Dict[str, Any] = {
    "arch": "gpt2", "masking": "clm", "d_model": 64, "n_layer": 2, "n_head": 4, "dropout": 0.1,
    "max_len": 20, "epochs": 5, "batch_size": 128, "lr": 3e-3,
}

# ----------------------------------------------------------------------------- environment

def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ----------------------------------------------------------------------------- schema

def make_schema(n_codes: int, max_len: int = 20, item_col: str = ITEM_COL):
    """A merlin Schema for the processed sessions' item list, as the ETL writes it.

    Codes ``0 .. n_codes-1`` (``int_domain.max = n_codes - 1``), tags ITEM_ID, ITEM, ID,
    CATEGORICAL, LIST, ragged with at most ``max_len`` values.
    """
    from merlin.schema import ColumnSchema, Schema, Tags

    col = ColumnSchema(
        item_col, dtype=np.int64,
        tags=[Tags.ITEM_ID, Tags.ITEM, Tags.ID, Tags.CATEGORICAL, Tags.LIST],
        properties={"domain": {"min": 0, "max": int(n_codes) - 1, "name": item_col},
                    "value_count": {"min": 1, "max": int(max_len)}},
        is_list=True, is_ragged=True)
    return Schema([col])


def load_schema(path: str | os.PathLike, item_col: str | None = None):
    """The item-list column of the schema stored with a processed parquet folder (schema.pbtxt)."""
    from merlin.schema import Tags
    from merlin.schema.io.tensorflow_metadata import TensorflowMetadata

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    schema = TensorflowMetadata.from_proto_text_file(str(folder)).to_merlin_schema()
    if item_col is None:
        ids = schema.select_by_tag(Tags.ITEM_ID).column_names
        if len(ids) != 1:
            raise ValueError(f"expected one ITEM_ID column in {folder}, found {ids}")
        item_col = ids[0]
    return schema.select_by_name([item_col])


def _item_column(schema) -> str:
    from merlin.schema import Tags

    names = schema.select_by_tag(Tags.ITEM_ID).column_names
    if len(names) != 1:
        raise ValueError(f"the schema needs exactly one column tagged ITEM_ID, found {names}")
    return names[0]


def _with_cardinality(schema, col_name: str, n_codes: int):
    """Copy of ``schema`` whose column ``col_name`` has domain max ``n_codes - 1``."""
    from merlin.schema import Schema

    cols = []
    for col in schema:
        if col.name == col_name:
            props = dict(col.properties)
            domain = dict(props.get("domain") or {})
            domain.update({"min": 0, "max": int(n_codes) - 1})
            domain.setdefault("name", col_name)
            props["domain"] = domain
            if isinstance(props.get("embedding_sizes"), dict):
                props["embedding_sizes"] = {**props["embedding_sizes"], "cardinality": int(n_codes)}
            col = col.with_properties(props)
        cols.append(col)
    return Schema(cols)


# ----------------------------------------------------------------------------- model access

def _head(model):
    if len(model.heads) != 1:
        raise ValueError("expected a model with one head")
    return model.heads[0]


def _task(model):
    tasks = list(_head(model).prediction_task_dict.values())
    if len(tasks) != 1:
        raise ValueError("expected one prediction task")
    return tasks[0]


def _input_block(model):
    return _head(model).body.inputs


def item_column(model) -> str:
    """Name of the item-id column the model reads."""
    return _input_block(model).item_id


def item_embedding(model) -> torch.nn.Embedding:
    """The one ``nn.Embedding`` used for both the input lookup and the tied output layer."""
    return _input_block(model).item_embedding_table


def text_table(model) -> torch.Tensor:
    """The pre-trained text rows the model reads (frozen unless built ``trainable``)."""
    emb = item_embedding(model)
    return (emb.text if isinstance(emb, ItemRepresentation) else emb.weight).detach()


def describe(model) -> Dict[str, Any]:
    """The settings of a T4R model, read from its modules (so that a model built on screen in a
    notebook and one from :func:`build_model` describe themselves alike): ``arch``, ``masking``,
    ``d_model``, ``n_layer``, ``n_head``, ``dropout``, ``max_len``, ``item_col``, ``n_codes``,
    ``pretrained`` and ``item_repr`` (the :class:`ItemRepresentation` switches, field names and
    the skip's gain; ``None`` for T4R's plain table), as :func:`build_model` takes them."""
    transformer = _head(model).body[1].transformer
    conf = transformer.config
    arch = "gpt2" if type(transformer).__name__ == "GPT2Model" else "xlnet"
    inputs = _input_block(model)
    emb = item_embedding(model)
    out: Dict[str, Any] = {
        "arch": arch, "masking": "clm" if type(inputs.masking).__name__ == "CausalLanguageModeling" else "mlm",
        "d_model": int(conf.n_embd if arch == "gpt2" else conf.d_model), "n_layer": int(conf.n_layer),
        "n_head": int(conf.n_head), "dropout": float(conf.resid_pdrop if arch == "gpt2" else conf.dropout),
        "max_len": int(model.max_sequence_length), "item_col": item_column(model),
        "n_codes": n_codes(model), "item_repr": None}
    if isinstance(emb, ItemRepresentation):
        block = _task(model).task_block
        skip = isinstance(block, LastClickSkip)
        out["pretrained"] = True
        out["item_repr"] = {"adapter": emb.use_adapter, "residual": emb.use_residual, "bias": emb.use_bias,
                            "drop": emb.drop, "skip": skip, "fields": list(emb.field_names),
                            "gain": float(block.gain.detach()) if skip else None}
    else:
        table_cfg = inputs.categorical_module.feature_config[out["item_col"]].table
        out["pretrained"] = type(table_cfg.initializer).__name__ == "PretrainedEmbeddingsInitializer"
    return out


def n_codes(model) -> int:
    return int(item_embedding(model).num_embeddings)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------- build

def build_model(schema, item_table: np.ndarray, d_model: int = DEFAULTS["d_model"],
                n_layer: int = DEFAULTS["n_layer"], n_head: int = DEFAULTS["n_head"],
                max_len: int = DEFAULTS["max_len"], arch: str = DEFAULTS["arch"],
                masking: str = DEFAULTS["masking"], pretrained: bool = True,
                trainable: bool = False, dropout: float = DEFAULTS["dropout"],
                seed: int | None = 0, item_repr: Dict[str, Any] | None = None):
    """Build a T4R next-item model whose item table is ``item_table`` (``(n_codes, 384)``).

    ``schema``: merlin Schema with the item-list column (tag ITEM_ID; other columns are ignored);
    its cardinality (``int_domain.max + 1``) must equal ``len(item_table)``. ``arch``: "xlnet" or
    "gpt2"; ``masking``: "mlm" (masked LM, with XLNet) or "clm" (causal LM, with GPT-2).
    ``pretrained=True`` initialises the table from ``item_table`` through T4R's
    ``PretrainedEmbeddingsInitializer``, frozen unless ``trainable``; ``pretrained=False`` builds
    the same architecture with a learned table (T4R's default normal initialisation; ``item_table``
    then only gives the shape). The output layer is tied to the table
    (``NextItemPredictionTask(weight_tying=True)``; T4R adds the ``d_model -> 384`` projection).

    ``item_repr`` (with ``pretrained=True``) replaces T4R's item table by a
    :class:`gtcrec.representation.ItemRepresentation` over the frozen ``item_table``: keys
    ``adapter``, ``residual``, ``bias``, ``drop`` (its switches), ``fields`` (``{name: value per
    code}``), ``warm`` (codes with training clicks), ``skip`` (use
    :class:`gtcrec.representation.LastClickSkip` as the task block) and ``gain`` (its start).
    """
    import transformers4rec.torch as tr
    from transformers4rec.torch.features.embedding import PretrainedEmbeddingsInitializer

    arch, masking = arch.lower(), masking.lower()
    if arch not in ("xlnet", "gpt2"):
        raise ValueError(f"arch must be 'xlnet' or 'gpt2', got {arch!r}")
    if masking not in ("mlm", "clm"):
        raise ValueError(f"masking must be 'mlm' or 'clm', got {masking!r}")
    if arch == "gpt2" and masking != "clm":
        raise ValueError("GPT-2 is causal: use masking='clm'")
    if arch == "xlnet" and masking != "mlm":
        # T4R's causal LM feeds item t at position t with label t+1; XLNet's default
        # bidirectional attention lets position t see position t+1, i.e. its own label, and
        # transformers 4.30's causal XLNet mask (attn_type="uni") crashes. Not a valid pairing.
        raise ValueError("XLNet is bidirectional here: use masking='mlm' (or arch='gpt2' for clm)")
    table = np.asarray(item_table, dtype=np.float32)
    if table.ndim != 2:
        raise ValueError(f"item_table must be 2-D, got shape {table.shape}")
    item_col = _item_column(schema)
    schema = schema.select_by_name([item_col])
    from merlin.models.utils.schema_utils import categorical_cardinalities

    card = categorical_cardinalities(schema).get(item_col)
    if card != table.shape[0]:
        raise ValueError(f"schema cardinality of {item_col} is {card}, item_table has "
                         f"{table.shape[0]} rows")
    if seed is not None:
        set_seed(seed)

    dim = table.shape[1]
    initializers = ({item_col: PretrainedEmbeddingsInitializer(table, trainable=trainable)}
                    if pretrained else None)
    inputs = tr.TabularSequenceFeatures.from_schema(
        schema, max_sequence_length=max_len, d_output=d_model, masking=masking,
        embedding_dims={item_col: dim}, embeddings_initializers=initializers)
    task_block = None
    if item_repr is not None:
        if not pretrained:
            raise ValueError("item_repr builds on the pre-trained table: use pretrained=True")
        rep_cfg = dict(item_repr)
        fields, warm = rep_cfg.pop("fields", None), rep_cfg.pop("warm", None)
        skip, gain = bool(rep_cfg.pop("skip", True)), float(rep_cfg.pop("gain", 5.0))
        if skip and masking != "clm":
            raise ValueError("the last-click skip needs causal LM (masked LM would see the label)")
        rep = ItemRepresentation(table, fields=fields, warm=warm, **rep_cfg)
        inputs.categorical_module.embedding_tables[item_col] = rep  # where T4R keeps its table
        if skip:
            task_block = LastClickSkip(d_model, dim, bias=rep.use_bias, gain=gain)

    if arch == "xlnet":
        config = tr.XLNetConfig.build(d_model=d_model, n_head=n_head, n_layer=n_layer,
                                      total_seq_length=max_len, dropout=dropout)
    else:
        # absolute positions: one spare beyond max_len
        config = tr.GPT2Config.build(d_model=d_model, n_head=n_head, n_layer=n_layer,
                                     total_seq_length=max_len + 1, dropout=dropout)
    task = tr.NextItemPredictionTask(weight_tying=True)
    t4r_logger = logging.getLogger("transformers4rec")
    level = t4r_logger.level
    t4r_logger.setLevel(logging.ERROR)  # the projection warning is expected when d_model != 384
    try:
        model = config.to_torch_model(inputs, task, task_blocks=task_block,
                                      max_sequence_length=max_len)
    finally:
        t4r_logger.setLevel(level)
    if task_block is not None:  # T4R copies the block when it builds the task: link the copy
        _task(model).task_block.link(_input_block(model).categorical_module)
    if pretrained and not torch.equal(text_table(model).cpu(), torch.from_numpy(table)):
        raise RuntimeError("the item table was not initialised from item_table")
    return model


# ----------------------------------------------------------------------------- data

def _parquet_files(path) -> list[str]:
    path = Path(path)
    files = sorted(glob.glob(str(path / "*.parquet"))) if path.is_dir() else [str(path)]
    if not files:
        raise FileNotFoundError(f"no parquet files under {path}")
    return files


def _as_dataset(data, schema):
    """merlin.io.Dataset from a parquet folder/file path or an existing Dataset."""
    from merlin.io import Dataset

    if isinstance(data, Dataset):
        ds = data
    else:
        ds = Dataset(_parquet_files(data), engine="parquet", cpu=not _gpu_dataframes())
    ds.schema = schema
    return ds


def _gpu_dataframes() -> bool:
    """Whether merlin can load data on the GPU (CUDA and cudf); otherwise pandas on the CPU."""
    if not torch.cuda.is_available():
        return False
    try:
        import cudf  # noqa: F401
    except ImportError:
        return False
    return True


def _num_rows(data) -> int | None:
    from merlin.io import Dataset

    if isinstance(data, Dataset):
        try:
            return int(data.num_rows)
        except Exception:  # pragma: no cover - depends on the engine
            return None
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in _parquet_files(data))


def _model_schema(model):
    return _input_block(model).schema


# ----------------------------------------------------------------------------- train

def training_arguments(output_dir, max_len: int, epochs: int, batch_size: int, lr: float, seed: int,
                       logging_steps: int, **overrides):
    """T4R's ``T4RecTrainingArguments`` of every training in the package (:func:`train`, the ranks of
    :mod:`gtcrec.ddp`): merlin batches, AdamW with a linear decay and no warm-up, nothing saved or
    reported, CPU unless CUDA is available, bfloat16 autocast where the machine has it natively
    (:func:`bf16_native`; the weights stay float32). ``overrides``: other arguments, or these replaced."""
    from transformers4rec.config.trainer import T4RecTrainingArguments

    settings = dict(
        output_dir=str(output_dir), max_sequence_length=int(max_len), data_loader_engine="merlin",
        num_train_epochs=epochs, max_steps=-1, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size, learning_rate=lr, weight_decay=0.0,
        lr_scheduler_type="linear", warmup_steps=0, optim="adamw_torch", seed=seed, data_seed=seed,
        no_cuda=not torch.cuda.is_available(), report_to=[], logging_steps=logging_steps,
        save_strategy="no", evaluation_strategy="no", dataloader_drop_last=False,
        dataloader_pin_memory=False, disable_tqdm=True, predict_top_k=20, log_level="warning",
        bf16=bf16_native())
    settings.update(overrides)
    return T4RecTrainingArguments(**settings)


def drop_mixed_precision(model):
    """Undo what bfloat16 training did to ``model``: the Trainer (through accelerate) wraps the model's
    ``forward`` in autocast, keeps the original as ``_original_forward``, and leaves both in place after
    training. Without this, scoring, tracing and serving would run under bfloat16 and saving fails
    (accelerate's wrapper refuses to be pickled). Afterwards the model's own float32 ``forward`` runs again.
    Returns ``model``; a model trained in float32 is left as it was."""
    if model.__dict__.pop("_original_forward", None) is not None:
        model.__dict__.pop("forward", None)  # the class's forward again
    return model


def train(model, train_data, valid_data=None, epochs: int = DEFAULTS["epochs"],
          batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"], seed: int = 42,
          output_dir: str | os.PathLike = "t4r-output", weight_decay: float = 0.0,
          logging_steps: int | None = None, max_steps: int = -1, verbose: bool = False,
          bf16: bool | None = None, callbacks: Sequence[Any] = ()) -> Dict[str, Any]:
    """Train with T4R's ``Trainer`` (``T4RecTrainingArguments``, linear learning-rate schedule).

    ``train_data`` / ``valid_data``: a processed parquet folder (or file) or a
    ``merlin.io.Dataset``; batches come from merlin-dataloader (T4R's "merlin" engine), shuffled
    with the seed. CPU unless CUDA is available (``no_cuda``).

    Returns ``{"train": [{"step", "epoch", "loss", "learning_rate"}...], "eval": [{"step",
    "epoch", "loss"}...], "seconds", "cpu_seconds", "steps", "n_train"}``, the loss history for
    a plot: training losses are averages over ``logging_steps`` steps (~10 per epoch by
    default); one eval entry per epoch when ``valid_data`` is given (the loss of predicting each
    session's last item). Nothing is checkpointed; save with :func:`save_model`. ``verbose`` keeps
    the Hugging Face progress/log printing. ``bf16``: train under bfloat16 autocast (``None``: where
    the machine has it natively, :func:`bf16_native`). ``callbacks``: Hugging Face ``TrainerCallback`` s
    (e.g. one that scores each epoch and stops the run).
    """
    from transformers4rec.torch import Trainer

    max_len = int(model.max_sequence_length)
    schema = _model_schema(model)
    n_train = _num_rows(train_data)
    if logging_steps is None:
        steps_per_epoch = max(1, (n_train or batch_size * 10) // batch_size)
        logging_steps = max(1, steps_per_epoch // 10)
    set_seed(seed)
    precision = {} if bf16 is None else {"bf16": bool(bf16)}  # None: training_arguments' default
    args = training_arguments(output_dir, max_len, epochs, batch_size, lr, seed, logging_steps,
                              weight_decay=weight_decay, max_steps=max_steps, **precision,
                              evaluation_strategy="epoch" if valid_data is not None else "no")
    trainer = Trainer(
        model=model, args=args, schema=schema,
        train_dataset_or_path=_as_dataset(train_data, schema),
        eval_dataset_or_path=None if valid_data is None else _as_dataset(valid_data, schema),
        compute_metrics=False, callbacks=list(callbacks))
    if not verbose:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    drop_mixed_precision(model)
    history = trainer.state.log_history
    train_hist = [{"step": h["step"], "epoch": h.get("epoch"), "loss": h["loss"],
                   "learning_rate": h.get("learning_rate")} for h in history if "loss" in h]
    eval_hist = []
    for h in history:
        loss_keys = [k for k in h if k.startswith("eval_") and k.endswith("loss")]
        if loss_keys:
            eval_hist.append({"step": h.get("step"), "epoch": h.get("epoch"),
                              "loss": float(h[loss_keys[0]])})
    model.eval()
    return {"train": train_hist, "eval": eval_hist, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "steps": int(trainer.state.global_step), "n_train": n_train}


# ----------------------------------------------------------------------------- scoring

def sessions_to_batch(sessions: Sequence[Sequence[int]], max_len: int = DEFAULTS["max_len"],
                      item_col: str = ITEM_COL, device: torch.device | str | None = None,
                      pad: bool = False) -> Dict[str, torch.Tensor]:
    """Ragged model input ``{col__values, col__offsets}`` (int64, like merlin-dataloader yields),
    keeping the LAST ``max_len`` codes of each session (T4R itself would keep the first).

    ``pad=True`` appends padding codes (0) so that every row holds ``max_len`` values, as the
    serving graph does: T4R pads a ragged batch to its longest row, and with a bidirectional
    transformer (XLNet) a session's scores change with that length; padded to ``max_len`` they
    do not depend on the other sessions of the batch (and match training, whose loader pads every
    session to ``max_len``).
    """
    trimmed = [np.asarray(s, dtype=np.int64).reshape(-1)[-max_len:] for s in sessions]
    if any(len(s) == 0 for s in trimmed):
        raise ValueError("empty session: the model needs at least one item")
    if pad:
        trimmed = [np.concatenate([s, np.zeros(max_len - len(s), dtype=np.int64)])
                   for s in trimmed]
    lengths = np.array([len(s) for s in trimmed], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.concatenate(trimmed) if trimmed else np.zeros(0, dtype=np.int64)
    return {f"{item_col}__values": torch.from_numpy(values).to(device or "cpu"),
            f"{item_col}__offsets": torch.from_numpy(offsets).to(device or "cpu")}


def score_sessions(model, prefixes: Sequence[Sequence[int]], batch_size: int = 1024
                   ) -> np.ndarray:
    """Scores ``(len(prefixes), n_codes)`` (float32 logits) for each prefix's next item.

    Eval mode, no gradients; reserved codes get ``-inf``. Each session keeps its last
    ``max_len`` codes and is padded to ``max_len`` (``sessions_to_batch(pad=True)``, as served),
    so a row's scores do not depend on the batch. Feed the result to
    :func:`gtcrec.metrics.evaluate_scores`.
    """
    max_len = int(model.max_sequence_length)
    col = item_column(model)
    device = model_device(model)
    top_k, model.top_k = model.top_k, None
    was_training = model.training
    model.eval()
    out = np.empty((len(prefixes), n_codes(model)), dtype=np.float32)
    try:
        with torch.no_grad():
            for start in range(0, len(prefixes), batch_size):
                batch = sessions_to_batch(prefixes[start:start + batch_size], max_len, col, device,
                                          pad=True)
                out[start:start + batch_size] = model(batch).float().cpu().numpy()
    finally:
        model.top_k = top_k
        model.train(was_training)
    out[:, :N_RESERVED] = -np.inf
    return out


def validation_recall(model, prefixes: Sequence[Sequence[int]], targets: Sequence[int],
                      stop_after: int | None = None):
    """A Hugging Face ``TrainerCallback`` for :func:`train` or T4R's ``Trainer``: at the end of every
    epoch it scores ``prefixes`` (the validation split) with :func:`score_sessions` and keeps
    :func:`gtcrec.metrics.evaluate_scores` of ``targets`` in ``.epochs`` (one dict per epoch, clicked
    talks excluded); it stops the run after ``stop_after`` epochs (``None``: never)."""
    from transformers import TrainerCallback

    from gtcrec import metrics

    class ValidationRecall(TrainerCallback):
        def __init__(self):
            self.epochs: list[dict] = []

        def on_epoch_end(self, args, state, control, **kwargs):
            scores = score_sessions(model, prefixes)  # as trained (under autocast with bf16), in eval mode
            self.epochs.append(metrics.evaluate_scores(scores, targets, exclude=prefixes))
            if stop_after is not None and len(self.epochs) >= stop_after:
                control.should_training_stop = True

    return ValidationRecall()


# ----------------------------------------------------------------------------- save / load

def save_model(model, path: str | os.PathLike) -> Path:
    """Save with T4R's own ``Model.save`` (cloudpickle; ``torch.save(model)`` fails on T4R)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    (path / "gtcrec_config.json").write_text(json.dumps(describe(model), indent=2))  # for readers
    return path


def load_model(path: str | os.PathLike, device: torch.device | str | None = None):
    """Load a model saved by :func:`save_model`, in eval mode (on ``device`` or CPU)."""
    from transformers4rec.torch import Model

    model = Model.load(str(path))
    model.to(device or "cpu")
    return model.eval()


# ----------------------------------------------------------------------------- catalog swap

def swap_item_table(model, new_table: np.ndarray, trainable: bool | None = None,
                    fields: Dict[str, Sequence[str]] | None = None):
    """Point the model at a new catalog: replace the item table's rows, no retraining.

    The single ``nn.Embedding`` gets ``new_table`` as weight (and ``num_embeddings``), so the input
    lookup and the tied output layer move together; the task's ``target_dim`` (task and its
    output module), the table config's vocabulary size, its initializer and every stored schema
    are updated. ``new_table`` must have the old embedding dimension and follow the same code
    layout (rows 0..2 reserved). The weight stays frozen unless ``trainable`` (default: as before).
    With an :class:`ItemRepresentation`, its text rows and ``fields`` (one value per code) are
    replaced and the new talks get no residual and a zero bias
    (:meth:`ItemRepresentation.set_catalog`); the adapter and field vectors stay as trained.
    Modifies ``model`` in place and returns it.
    """
    from transformers4rec.torch.features.embedding import PretrainedEmbeddingsInitializer

    table = np.asarray(new_table, dtype=np.float32)
    emb = item_embedding(model)
    if table.ndim != 2 or table.shape[1] != emb.embedding_dim:
        raise ValueError(f"new table must be (n, {emb.embedding_dim}), got {table.shape}")
    if table.shape[0] <= N_RESERVED:
        raise ValueError("new table has no item rows")
    n_new = table.shape[0]
    if isinstance(emb, ItemRepresentation):
        emb.set_catalog(table, fields)
        requires_grad = False
    else:
        requires_grad = emb.weight.requires_grad if trainable is None else trainable
        weight = torch.from_numpy(table.copy()).to(device=emb.weight.device, dtype=emb.weight.dtype)
        emb.weight = torch.nn.Parameter(weight, requires_grad=requires_grad)
        emb.num_embeddings = n_new

    inputs = _input_block(model)
    cat = inputs.categorical_module
    col = cat.item_id
    table_cfg = cat.feature_config[col].table
    table_cfg.vocabulary_size = n_new
    table_cfg.initializer = PretrainedEmbeddingsInitializer(table, trainable=requires_grad)

    task = _task(model)
    if task.item_embedding_table is not None and task.item_embedding_table is not emb:
        raise RuntimeError("the task's output table is not the input table: weight tying broken")
    task.target_dim = n_new
    pre = getattr(task, "pre", None)
    if pre is not None:
        inner = getattr(pre, "module", pre)
        inner.target_dim = n_new
        inner_table = getattr(inner, "item_embedding_table", None)
        if inner_table is not None and inner_table is not emb:
            raise RuntimeError("the output module holds another table")
        if hasattr(pre, "_output_size"):
            pre._output_size = [-1, n_new]
        sampler = getattr(inner, "sampler", None)
        if sampler is not None and hasattr(sampler, "max_id"):
            sampler.max_id = n_new

    for module in model.modules():
        schema = getattr(module, "_schema", None)
        if schema is not None and hasattr(schema, "column_names") and col in schema.column_names:
            module._schema = _with_cardinality(schema, col, n_new)
    return model
