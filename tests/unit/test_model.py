"""The T4R model: frozen pre-trained table, training, scoring, tracing, saving, catalog swap.

Small synthetic data made here (a topical catalog of 40 talks with 384-d vectors, ragged sessions
of item codes written as processed parquet), a tiny transformer, and short trainings.

Precision: trained once per precision (the ``precision`` fixture); why the tolerances are float32's:
tests/conftest.py.
"""
import numpy as np
import pandas as pd
import pytest
import torch

from gtcrec import model as M
from gtcrec import trace as T
from gtcrec.metrics import evaluate_scores, sessions_to_prefixes

N_ITEMS, N_TOPICS, DIM = 40, 4, 384
SMALL = dict(d_model=16, n_layer=1, n_head=2, max_len=20)


def make_table(n_items, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(N_TOPICS, DIM))
    vecs = centers[np.arange(n_items) % N_TOPICS] + 0.5 * rng.normal(size=(n_items, DIM))
    table = np.zeros((n_items + 3, DIM), dtype=np.float32)
    table[3:] = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    return table


def make_sessions(n, seed):
    rng = np.random.default_rng(seed)
    codes = np.arange(3, N_ITEMS + 3)
    out = []
    for _ in range(n):
        members = codes[(codes - 3) % N_TOPICS == rng.integers(N_TOPICS)]
        out.append(rng.choice(members, size=int(rng.integers(2, 9))).astype(np.int64))
    return out


def write_parquet(sessions, folder):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"session_id": np.arange(len(sessions), dtype=np.int64),
                  "item_id-list": sessions}).to_parquet(folder / "part_0.parquet", index=False)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sessions")
    train = make_sessions(384, seed=1)
    valid = make_sessions(64, seed=2)
    return {"table": make_table(N_ITEMS, seed=0), "schema": M.make_schema(N_ITEMS + 3),
            "train": train, "valid": valid,
            "train_dir": write_parquet(train, root / "train"),
            "valid_dir": write_parquet(valid, root / "valid"), "root": root}


@pytest.fixture(scope="module")
def trained(data, precision):
    """A frozen-table model, its weights before training, and its training history: once per precision
    (``precision``, tests/conftest.py), so that every test of the trained model holds after float32 and after
    bfloat16 training."""
    model = M.build_model(data["schema"], data["table"], seed=0, **SMALL)
    before = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
    history = M.train(model, data["train_dir"], data["valid_dir"], epochs=4, batch_size=64,
                      lr=3e-2, seed=3, output_dir=data["root"] / "out")
    return model.cpu().eval(), before, history  # trained on the GPU when there is one


def test_build_table_equals_input_and_is_frozen(data):
    model = M.build_model(data["schema"], data["table"], **SMALL)
    emb = M.item_embedding(model)
    assert type(model.heads[0].body[1].transformer).__name__ == "GPT2Model"  # the default
    assert isinstance(emb, torch.nn.Embedding)
    assert tuple(emb.weight.shape) == (N_ITEMS + 3, DIM)
    assert torch.equal(emb.weight.detach(), torch.from_numpy(data["table"]))
    assert not emb.weight.requires_grad
    task = M._task(model)
    assert task.item_embedding_table is emb and task.target_dim == N_ITEMS + 3
    assert model.output_schema.first.properties["int_domain"]["max"] == N_ITEMS + 3


def test_build_rejects_bad_arguments(data):
    with pytest.raises(ValueError, match="cardinality"):
        M.build_model(M.make_schema(N_ITEMS + 4), data["table"], **SMALL)
    with pytest.raises(ValueError, match="clm"):
        M.build_model(data["schema"], data["table"], arch="gpt2", masking="mlm", **SMALL)
    with pytest.raises(ValueError, match="mlm"):
        M.build_model(data["schema"], data["table"], arch="xlnet", masking="clm", **SMALL)
    with pytest.raises(ValueError):
        M.build_model(data["schema"], data["table"], arch="lstm", **SMALL)


def test_learned_and_trainable_variants(data):
    learned = M.build_model(data["schema"], data["table"], pretrained=False, **SMALL)
    w = M.item_embedding(learned).weight
    assert w.requires_grad and w.shape == (N_ITEMS + 3, DIM)
    assert not torch.allclose(w.detach(), torch.from_numpy(data["table"]), atol=1e-3)
    tuned = M.build_model(data["schema"], data["table"], trainable=True, **SMALL)
    w = M.item_embedding(tuned).weight
    assert w.requires_grad and torch.equal(w.detach(), torch.from_numpy(data["table"]))


def test_xlnet_mlm_builds_scores_and_traces(data):
    model = M.build_model(data["schema"], data["table"], arch="xlnet", masking="mlm", **SMALL)
    emb = M.item_embedding(model)
    assert torch.equal(emb.weight.detach(), torch.from_numpy(data["table"]))
    assert type(model.heads[0].body[1].transformer).__name__ == "XLNetModel"
    scores = M.score_sessions(model, [[3, 7], [4]])
    assert scores.shape == (2, N_ITEMS + 3) and np.isfinite(scores[:, 3:]).all()
    traced = T.trace_topk(model, M.sessions_to_batch([[3, 7], [4]]), k=5)
    T.check_traced(traced, model, M.sessions_to_batch(data["valid"][:9]))
    # XLNet attends to padded positions: T4R pads a ragged batch to its longest session, so
    # unpadded scores depend on the batch; score_sessions pads every session to max_len
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
        long = list(range(3, 23))
        ragged_alone = model(M.sessions_to_batch([[3, 4, 5]])).numpy()
        ragged_batch = model(M.sessions_to_batch([[3, 4, 5], long])).numpy()[:1]
    assert np.abs(ragged_alone[:, 3:] - ragged_batch[:, 3:]).max() > 1e-3
    alone = M.score_sessions(model, [[3, 4, 5]])
    in_batch = M.score_sessions(model, [[3, 4, 5], long])[:1]
    np.testing.assert_allclose(alone[:, 3:], in_batch[:, 3:], rtol=1e-4, atol=1e-4)


def test_training_keeps_frozen_table_and_learns(data, trained):
    model, before, history = trained
    after = dict(model.named_parameters())
    emb_name = [n for n, p in after.items() if p is M.item_embedding(model).weight][0]
    assert torch.equal(after[emb_name].detach(), before[emb_name])
    assert torch.equal(after[emb_name].detach(), torch.from_numpy(data["table"]))
    changed = [n for n, p in after.items()
               if p.requires_grad and not torch.equal(p.detach(), before[n])]
    assert len(changed) >= 5
    assert history["steps"] == 24  # 384 sessions / 64 x 4 epochs
    losses = [h["loss"] for h in history["train"]]
    assert len(losses) >= 2 and all(np.isfinite(losses))
    assert len(history["eval"]) == 4 and all(np.isfinite(e["loss"]) for e in history["eval"])
    assert history["train"][0]["learning_rate"] > history["train"][-1]["learning_rate"]  # linear
    # it learned the topics: far above the ~25 % recall@10 of guessing within 40 items
    prefixes, targets = sessions_to_prefixes(data["valid"])
    res = evaluate_scores(M.score_sessions(model, prefixes), targets)
    assert res["recall@10"] > 0.8


def test_learned_table_changes_in_training(data, precision):
    model = M.build_model(data["schema"], data["table"], pretrained=False, seed=0, **SMALL)
    w0 = M.item_embedding(model).weight.detach().cpu().clone()
    M.train(model, data["train_dir"], epochs=1, batch_size=128, max_steps=2,
            output_dir=data["root"] / "out-learned")
    assert not torch.equal(M.item_embedding(model).weight.detach().cpu(), w0)


@pytest.mark.parametrize("bf16", [True, False])
def test_after_training_the_model_runs_its_own_float32_forward(data, tmp_path, bf16):
    """bf16 training wraps the forward in autocast (accelerate); train() takes the wrapper off, so that
    scoring runs in float32 (the same scores as a copy that never trained under autocast) and saving works."""
    model = M.build_model(data["schema"], data["table"], seed=5, **SMALL)
    M.train(model, data["train_dir"], epochs=1, batch_size=64, max_steps=2, seed=9,
            output_dir=data["root"] / "out-bf16", bf16=bf16)
    assert "_original_forward" not in model.__dict__ and "forward" not in model.__dict__
    copy = M.load_model(M.save_model(model, tmp_path / "m"))
    np.testing.assert_array_equal(M.score_sessions(model, [[3, 4, 5], [10]]), M.score_sessions(copy, [[3, 4, 5], [10]]))


def test_training_is_deterministic_for_a_seed(data, precision):
    def run():
        model = M.build_model(data["schema"], data["table"], seed=5, **SMALL)
        hist = M.train(model, data["train_dir"], epochs=1, batch_size=64, max_steps=3,
                       logging_steps=1, seed=9, output_dir=data["root"] / "out-det")
        return [h["loss"] for h in hist["train"]], M.score_sessions(model, [[3, 4, 5]])

    (l1, s1), (l2, s2) = run(), run()
    assert l1 == l2 and len(l1) == 3
    np.testing.assert_allclose(s1, s2, rtol=1e-5)


def test_score_sessions_masks_reserved_and_keeps_last_items(trained):
    model = trained[0]
    scores = M.score_sessions(model, [[3, 4, 5], [10]])
    assert scores.shape == (2, N_ITEMS + 3) and scores.dtype == np.float32
    assert np.isneginf(scores[:, :3]).all() and np.isfinite(scores[:, 3:]).all()
    # GPT-2 (causal): a session's scores do not depend on the others in its batch
    np.testing.assert_allclose(M.score_sessions(model, [[3, 4, 5], list(range(3, 23))])[:1],
                               scores[:1], rtol=1e-4, atol=1e-4)
    long = list(range(3, 3 + 25))  # longer than max_len: the last 20 items count
    np.testing.assert_allclose(M.score_sessions(model, [long]),
                               M.score_sessions(model, [long[-20:]]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(M.score_sessions(model, [long])[0, 3:],
                           M.score_sessions(model, [long[:20]])[0, 3:])
    batch = M.sessions_to_batch([[3, 4, 5]], pad=True)
    assert batch["item_id-list__values"].tolist() == [3, 4, 5] + [0] * 17
    with torch.no_grad():
        raw = model(batch).numpy()
    np.testing.assert_allclose(scores[0, 3:], raw[0, 3:], rtol=1e-5, atol=1e-6)


def test_trace_matches_eager_on_other_batches(trained, data):
    model = trained[0]
    traced = T.trace_topk(model, M.sessions_to_batch(data["valid"][:4]), k=10)
    for sessions in (data["valid"][4:40], data["valid"][:1], [[3, 4, 5, 6, 7, 8, 9, 10, 11]]):
        batch = M.sessions_to_batch(sessions)
        info = T.check_traced(traced, model, batch)
        assert info["max_score_diff"] < 1e-4
        with torch.no_grad():
            scores, codes = traced(batch)
        assert scores.shape == (len(sessions), 10) and codes.min() >= 3
        eager = M.score_sessions(model, sessions)
        np.testing.assert_array_equal(codes.numpy()[:, 0], eager.argmax(axis=1))
    # int32 codes and offsets (Merlin's executor sends INT32 offsets) give the same answer
    batch = M.sessions_to_batch(data["valid"][:8])
    with torch.no_grad():
        s64, c64 = traced(batch)
        s32, c32 = traced({name: t.to(torch.int32) for name, t in batch.items()})
    assert torch.equal(c64, c32) and torch.allclose(s64, s32)
    # a ragged batch exactly as merlin-dataloader yields it
    from merlin.dataloader.torch import Loader
    from merlin.io import Dataset

    dataset = Dataset(str(data["valid_dir"] / "part_0.parquet"), engine="parquet", cpu=True)
    dataset.schema = data["schema"]
    inputs, _ = next(iter(Loader(dataset, batch_size=16)))
    assert set(inputs) == {"item_id-list__values", "item_id-list__offsets"}
    T.check_traced(traced, model, inputs)
    with torch.no_grad():
        _, codes = traced(inputs)
    eager = M.score_sessions(model, data["valid"][:16])
    np.testing.assert_array_equal(codes.numpy()[:, 0], eager.argmax(axis=1))
    other = M.build_model(data["schema"], data["table"], seed=11, **SMALL).eval()
    with pytest.raises(AssertionError):
        T.check_traced(traced, other, M.sessions_to_batch(data["valid"][:8]))


def test_save_and_load_roundtrip(trained, data, tmp_path):
    model = trained[0]
    path = M.save_model(model, tmp_path / "model")
    loaded = M.load_model(path)
    prefixes = [s[:-1] for s in data["valid"][:16]]
    np.testing.assert_allclose(M.score_sessions(loaded, prefixes),
                               M.score_sessions(model, prefixes), rtol=1e-6)
    batch = M.sessions_to_batch(prefixes)
    traced = T.trace_topk(loaded, batch, k=5)
    traced.save(str(tmp_path / "topk.pt"))
    reloaded = torch.jit.load(str(tmp_path / "topk.pt"))
    with torch.no_grad():
        a, b = traced(batch), reloaded(batch)
    assert torch.equal(a[1], b[1]) and torch.allclose(a[0], b[0])


def test_swap_item_table_moves_lookup_and_output_together(trained, data, tmp_path):
    model = M.load_model(M.save_model(trained[0], tmp_path / "m"))  # keep the fixture intact
    old_table = data["table"]
    # the new catalog: 25 of the old talks in a shuffled order plus 5 unseen ones
    rng = np.random.default_rng(4)
    kept = rng.permutation(N_ITEMS)[:25]
    new_table = np.zeros((3 + 30, DIM), dtype=np.float32)
    new_table[3:28] = old_table[3 + kept]
    new_table[28:] = make_table(5, seed=9)[3:]
    old_to_new = {int(k) + 3: i + 3 for i, k in enumerate(kept)}
    prefixes_old = [[c for c in s if c in old_to_new] for s in data["valid"]]
    prefixes_old = [p for p in prefixes_old if p][:20]
    before = M.score_sessions(model, prefixes_old)

    M.swap_item_table(model, new_table)
    emb = M.item_embedding(model)
    assert emb.num_embeddings == 33 and tuple(emb.weight.shape) == (33, DIM)
    assert torch.equal(emb.weight.detach(), torch.from_numpy(new_table))
    assert not emb.weight.requires_grad
    task = M._task(model)
    assert task.target_dim == 33 and task.pre.module.target_dim == 33
    assert task.item_embedding_table is emb and task.pre.module.item_embedding_table is emb
    assert model.input_schema["item_id-list"].int_domain.max == 32
    assert model.output_schema.first.properties["int_domain"]["max"] == 33

    prefixes_new = [[old_to_new[c] for c in p] for p in prefixes_old]
    after = M.score_sessions(model, prefixes_new)
    assert after.shape == (len(prefixes_new), 33)
    old_codes = [int(k) + 3 for k in kept]
    # same vectors in, same vectors out: each kept talk keeps its score under its new code
    np.testing.assert_allclose(after[:, 3:28], before[:, old_codes], rtol=1e-4, atol=1e-4)

    batch = M.sessions_to_batch(prefixes_new)
    traced = T.trace_topk(model, batch, k=10)
    T.check_traced(traced, model, M.sessions_to_batch(prefixes_new[::-1][:7]))
    with torch.no_grad():
        _, codes = traced(batch)
    assert int(codes.max()) < 33 and int(codes.min()) >= 3
    with pytest.raises(ValueError):
        M.swap_item_table(model, np.zeros((10, 16), dtype=np.float32))


def test_load_schema_from_processed_folder(data, tmp_path):
    from merlin.schema.io.tensorflow_metadata import TensorflowMetadata

    folder = write_parquet(data["train"][:10], tmp_path / "proc")
    TensorflowMetadata.from_merlin_schema(data["schema"]).to_proto_text_file(str(folder))
    schema = M.load_schema(folder)
    assert schema.column_names == ["item_id-list"]
    model = M.build_model(schema, data["table"], **SMALL)
    assert M.n_codes(model) == N_ITEMS + 3
