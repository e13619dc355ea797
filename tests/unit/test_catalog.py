"""Catalogs with only some of the documented columns: through load_catalog, the embedded text and
gtcrec-swap's catalog validation and preparation (gtcrec.swap.validate_catalog / prepare_catalog)."""
import numpy as np
import pandas as pd
import pytest

from gtcrec import data, embeddings, etl, swap

REAL_WORLD = pd.DataFrame({
    "id": ["GTC-101", "GTC-102", "GTC-103"],
    "title": ["Scaling LLM Inference on GPUs", "Robot Grasping Learned in Simulation", "Faster Genomics Pipelines"],
    "abstract": ["How a 70B model is served with low latency.", "", "Variant calling at scale."],
    "speakers": ["Ada Lovelace; Alan Turing", "Grace Hopper", ""],
    "tags": ["llm, inference", "robotics", "healthcare"],
    "recording time": ["2025-03-18T10:00:00", "", "2025-03-19T14:30:00"],
})


@pytest.fixture(params=["csv", "parquet"])
def suffix(request):
    return request.param


def write(frame, path):
    frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path, index=False)
    return path


def test_title_only_catalog_is_validated_and_prepared(tmp_path, suffix):
    path = write(pd.DataFrame({"talk_id": ["N1", "N2"], "title": ["Graph neural networks", "Quantum chemistry"]}),
                 tmp_path / f"new.{suffix}")
    catalog = swap.validate_catalog(path, old_vocab=["S1", "S2"], min_talks=2)
    assert catalog["talk_id"].tolist() == ["N1", "N2"] and catalog["track"].eq("").all()
    assert embeddings.talk_text(catalog) == ["Graph neural networks", "Quantum chemistry"]
    prepared = swap.prepare_catalog(path, tmp_path / "cache", old_vocab=["S1", "S2"], min_talks=2)
    assert prepared.vocab == ["N1", "N2"] and prepared.table.shape == (5, embeddings.DIM)
    assert not prepared.table[:etl.RESERVED].any()
    np.testing.assert_allclose(np.linalg.norm(prepared.table[etl.RESERVED:], axis=1), 1.0, atol=1e-5)
    # the vectors are those of the titles alone (the same cache keys)
    titles, n_new = embeddings.embed_texts(["Graph neural networks", "Quantum chemistry"], tmp_path / "cache",
                                           progress=False)
    assert n_new == 0
    np.testing.assert_array_equal(prepared.table[etl.RESERVED:], titles)


def test_real_world_catalog_is_validated_and_prepared(tmp_path, suffix):
    path = write(REAL_WORLD, tmp_path / f"real.{suffix}")
    catalog = swap.validate_catalog(path, old_vocab=["S1"], min_talks=3)
    assert catalog["talk_id"].tolist() == REAL_WORLD["id"].tolist()
    assert list(catalog.columns) == data.CATALOG_COLUMNS + ["speakers", "tags", "recording time"]
    assert catalog["speakers"].tolist() == REAL_WORLD["speakers"].tolist()
    assert embeddings.talk_text(catalog) == ["Scaling LLM Inference on GPUs. How a 70B model is served with low latency.",
                                             "Robot Grasping Learned in Simulation",
                                             "Faster Genomics Pipelines. Variant calling at scale."]
    prepared = swap.prepare_catalog(path, tmp_path / "cache", old_vocab=["S1"], min_talks=3)
    assert prepared.vocab == REAL_WORLD["id"].tolist() and prepared.newly_encoded == 3
    assert prepared.table.shape == (6, embeddings.DIM)


def test_bad_catalogs_get_one_clear_error_and_change_nothing(tmp_path):
    cache = tmp_path / "cache"
    cases = {
        "no_title.csv": (REAL_WORLD.drop(columns=["title"]), ["header (line 1), column 'title': missing column"]),
        "no_id.csv": (REAL_WORLD.drop(columns=["id"]), ["column 'talk_id': missing column (or 'id'"]),
        "served_id.csv": (REAL_WORLD, ["row 2, column 'id': talk id 'GTC-102' is already in the catalog being served"]),
        "dup.csv": (REAL_WORLD.assign(id=["A", "B", "A"], title=["x", "", "z"]),
                    ["rows 1 and 3, column 'id': duplicate talk id 'A'", "row 2, column 'title': empty title"]),
    }
    for name, (frame, parts) in cases.items():
        path = write(frame, tmp_path / name)
        with pytest.raises(data.DataValidationError) as info:
            swap.prepare_catalog(path, cache, old_vocab=["GTC-102"])
        message = str(info.value)
        assert message.startswith(f"{path}: {len(parts)} problem(s)"), message
        for part in parts:
            assert part in message, (part, message)
    assert not cache.exists()  # nothing encoded, nothing written
