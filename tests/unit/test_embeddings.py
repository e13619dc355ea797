import os
import re

import numpy as np
import pandas as pd
import pytest

from gtcrec import embeddings


@pytest.fixture(scope="module")
def texts():
    return ["Scaling large language model training across thousands of GPUs",
            "Distributed training of transformer language models with tensor parallelism",
            "Robot arm grasping learned in simulation with reinforcement learning",
            "Medical image segmentation for radiology with deep learning"]


def test_vectors_are_normalised_and_semantic(tmp_path, texts):
    vectors, n_new = embeddings.embed_texts(texts, tmp_path, progress=False)
    assert n_new == 4 and vectors.shape == (4, 384) and vectors.dtype == np.float32
    # float32 vectors, normalised in float32: 1 to a few units in the last place of float32 (1e-7 each)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2 and sims[0, 1] > sims[0, 3] + 0.2  # the two LLM talks are closest


def test_cache_reuses_vectors(tmp_path, texts, precision):
    first, _ = embeddings.embed_texts(texts[:2], tmp_path, progress=False)
    again, n_new = embeddings.embed_texts(texts[::-1], tmp_path, progress=False)
    assert n_new == 2  # only the two texts not seen before are encoded
    np.testing.assert_array_equal(again[-1], first[0])
    cache = embeddings.EmbeddingCache(tmp_path)
    # the cache keeps float32 vectors under float32 keys, whatever precision training uses on this machine
    assert len(cache) == 4 and cache.missing([embeddings.text_key(t, "fp32") for t in texts]) == []


def test_batching_does_not_change_vectors(texts, precision):
    """A talk's vector does not depend on the other talks in its batch, on every precision path: text
    encoding runs in float32 even where training uses bfloat16. In float32, another batch changes only the
    padding and so the kernels' blocking, that is the order of float32 sums: on an AVX512 CPU batches of 1, 4
    and 3 (reversed) gave the same bits, and on AMX the same float32 code stayed within 1e-5. Under bfloat16
    autocast on AMX the same comparison moved by 6.4e-4, which this bound catches."""
    encoder = embeddings.TextEncoder()
    assert encoder.precision == "fp32"
    one = encoder.encode(texts, batch_size=1, progress=False)
    many = encoder.encode(texts, batch_size=4, progress=False)
    other = encoder.encode(texts[::-1], batch_size=3, progress=False)[::-1]
    np.testing.assert_allclose(one, many, atol=1e-5, rtol=0)
    np.testing.assert_allclose(other, many, atol=1e-5, rtol=0)


def test_bf16_encoding_matches_fp32(texts):
    """bfloat16 autocast (``benchmarks/encoding.py`` measures it; the series encodes in float32) gives the
    float32 vectors to a cosine of 0.9999, and its cache keys differ from float32's, so the two never mix in one
    cache. The bound: 0.99997 at the least over 5,000 talks on AVX512-BF16 (docs/results.md); and if every one
    of the 384 components moved by the 6.4e-4 seen between two bfloat16 batchings on AMX, two unit vectors
    would still have a cosine of 1 - 384 x (6.4e-4)^2 / 2 = 0.99992."""
    fp32 = embeddings.TextEncoder(precision="fp32").encode(texts, progress=False)
    bf16 = embeddings.TextEncoder(precision="bf16").encode(texts, progress=False)
    assert bf16.dtype == np.float32 and not np.array_equal(bf16, fp32)
    assert (fp32 * bf16).sum(1).min() > 0.9999
    assert embeddings.text_key(texts[0], "bf16") != embeddings.text_key(texts[0], "fp32") == embeddings.text_key(texts[0])
    with pytest.raises(ValueError, match="precision"):
        embeddings.TextEncoder(precision="int8")


def test_training_precision_follows_the_cpu_flags(monkeypatch):
    from gtcrec.model import bf16_native

    monkeypatch.delenv("GTCREC_BF16", raising=False)
    assert bf16_native("cpu", "fpu sse avx2 avx512f avx512_bf16 avx512_vnni")
    assert bf16_native("cpu", "fpu amx_bf16 amx_tile")
    assert not bf16_native("cpu", "fpu sse avx2 avx512f avx512bw avx512_vnni")  # AVX-512 alone: emulated


def test_bf16_can_be_forced_off_and_on(monkeypatch):
    from gtcrec.device import bf16_native

    monkeypatch.setenv("GTCREC_BF16", "0")
    assert not bf16_native("cpu", "fpu avx512_bf16")
    monkeypatch.setenv("GTCREC_BF16", "1")
    assert bf16_native("cpu", "fpu sse avx2")
    monkeypatch.setenv("GTCREC_BF16", "no")
    with pytest.raises(ValueError, match="GTCREC_BF16 must be 0 or 1"):
        bf16_native("cpu", "fpu")


def test_talk_text_uses_title_and_abstract():
    catalog = pd.DataFrame({"title": ["T"], "abstract": ["A body."], "track": ["HPC"], "format": ["Talk"],
                            "level": ["Beginner"]})
    assert embeddings.talk_text(catalog) == ["T. HPC; Talk, Beginner. A body."]


def test_talk_text_leaves_out_empty_and_absent_fields():
    full = pd.DataFrame({"title": ["T", "T", "T", "T", "T"], "abstract": ["A body.", "", "A body.", None, "  "],
                         "track": ["HPC", "HPC", "", "", float("nan")], "format": ["Talk", "", "Talk", "", ""],
                         "level": ["Beginner", "", "", "Advanced", ""]})
    assert embeddings.talk_text(full) == ["T. HPC; Talk, Beginner. A body.", "T. HPC", "T. Talk. A body.",
                                          "T. Advanced", "T"]
    # a catalog with only talk_id and title, and a real-world one with other columns
    only_title = pd.DataFrame({"talk_id": ["a", "b"], "title": ["Scaling LLMs", "Robot grasping"]})
    assert embeddings.talk_text(only_title) == ["Scaling LLMs", "Robot grasping"]
    real = pd.DataFrame({"talk_id": ["1"], "title": ["Scaling LLMs"], "abstract": ["How we trained it."],
                         "speakers": ["Ada"], "tags": ["llm"], "recording time": ["2025-03-18 10:00"]})
    assert embeddings.talk_text(real) == ["Scaling LLMs. How we trained it."]
    for text in embeddings.talk_text(full) + embeddings.talk_text(only_title) + embeddings.talk_text(real):
        assert all(part.strip(" .;,") for part in re.split(r"[.;,] ", text)), text  # no empty fragment
        assert text == text.strip() and not text.endswith((";", ","))


def test_talk_text_keys_of_full_rows_are_unchanged():
    """Full rows keep the text (and so the cache keys) of earlier versions."""
    row = pd.DataFrame({"title": ["A"], "abstract": ["B c."], "track": ["T"], "format": ["F"], "level": ["L"]})
    old_format = "{title}. {track}; {format}, {level}. {abstract}".format(**row.iloc[0])
    assert embeddings.talk_text(row) == [old_format]
    assert embeddings.text_key(old_format) == embeddings.text_key(embeddings.talk_text(row)[0])


def test_torch_threads_follow_the_environment_in_a_new_process():
    import subprocess
    import sys

    code = "import gtcrec.device, torch; print(torch.get_num_threads())"
    env = {**os.environ, "GTCREC_TORCH_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
