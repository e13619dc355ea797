"""What a notebook writes on screen against what the package runs without a notebook.

Notebooks 01 and 05 write the stock Merlin calls they teach in their cells (the NVTabular workflow,
the ``Ensemble`` graph). The package needs the same things without a notebook (``etl.run_etl`` for the
catalog swap's new event, the benchmarks and unit tests; ``export.build_ensemble`` for the swap, the
benchmarks and unit tests) and keeps one definition of each; these tests check that the notebook's
version gives identical outputs. (Notebook 02's ``Loader`` has no package twin: nothing else builds one.)
"""
import numpy as np
import pandas as pd
import pytest

from gtcrec import data, etl
from gtcrec.serving import client as cl
from gtcrec.serving import export as ex

pytestmark = [pytest.mark.notebooks, pytest.mark.xdist_group("notebooks")]  # one xdist worker runs them all, in order


def test_etl_notebook_workflow_equals_run_etl(series, tmp_path):
    """Notebook 01's on-screen workflow and ``gtcrec.etl.run_etl`` give the same sessions, row for row."""
    manifest = series.run("01-etl")
    params = manifest["parameters"]
    catalog = data.load_catalog(series.path("00-data", "spring_catalog"))
    clicks, _ = data.load_clicks(series.path("00-data", "spring_clicks"), catalog)
    result = etl.run_etl(clicks, catalog, tmp_path, max_len=params["MAX_LEN"], valid_frac=params["VALID_FRAC"],
                         test_frac=params["TEST_FRAC"])
    for split in etl.SPLITS:
        pd.testing.assert_frame_equal(etl.read_split(series.path("01-etl", split)), etl.read_split(result.split_dirs[split]),
                                      check_exact=True)
    assert {k: v for k, v in manifest["metrics"].items() if k in result.counts} == result.counts
    talks = list(catalog["talk_id"]) + ["not-a-talk"]
    np.testing.assert_array_equal(etl.encode_talk_ids(series.path("01-etl", "workflow"), talks),
                                  etl.encode_talk_ids(result.workflow_dir, talks))


def test_ensemble_notebook_graph_equals_build_ensemble(series):
    """Notebook 05's on-screen ``Ensemble`` and ``gtcrec.serving.export.build_ensemble`` (what the
    catalog swap exports) answer the reference request identically."""
    manifest = series.run("05-ensemble")
    m = manifest["metrics"]
    vocab = pd.read_parquet(series.path("01-etl", "vocab"))["talk_id"].astype(str).tolist()
    popularity = np.load(series.path("04-item-representation", "popularity"))
    ensemble = ex.build_ensemble(vocab, series.path("04-item-representation", "torchscript"), max_len=m["max_len"], k=m["k"],
                                 popularity=popularity)
    assert ex.graph_table(ensemble)["operator"].tolist() == m["graph"]
    request = cl.request_arrays(pd.read_parquet(series.path("05-ensemble", "reference_request")))
    answer = cl.to_frame(ex.reference_outputs(ensemble, request).outputs)
    pd.testing.assert_frame_equal(answer, pd.read_parquet(series.path("05-ensemble", "reference_answer")),
                                  check_exact=True)


def test_ensemble_notebook_stock_graph_equals_the_package_one(series):
    """Notebook 05's on-screen stock graph (``PredictPyTorch``) has the operators, reads and writes of
    ``gtcrec.serving.export.build_pytorch_backend_ensemble`` (what ``export_ensemble`` exports for a Triton with
    the PyTorch backend). Neither can answer in process, so their graphs are compared."""
    manifest = series.run("05-ensemble")
    m = manifest["metrics"]
    vocab = pd.read_parquet(series.path("01-etl", "vocab"))["talk_id"].astype(str).tolist()
    package = ex.build_pytorch_backend_ensemble(vocab, series.path("04-item-representation", "torchscript"), max_len=m["max_len"],
                                                k=m["k"], popularity=np.load(series.path("04-item-representation", "popularity")))
    assert ex.graph_table(package)["operator"].tolist() == m["stock_graph"]
    assert "PredictPyTorch" in m["stock_graph"] and "TorchScriptTopK" not in m["stock_graph"]
