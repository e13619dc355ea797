"""What a notebook writes on screen against what the package runs without a notebook.

Notebooks 01, 02 and 04 write the stock Merlin calls they teach in their cells (the NVTabular
workflow, the ``Loader`` with ``EmbeddingOperator``, the ``Ensemble`` graph). Where the package needs
the same thing without a notebook (``etl.run_etl`` for the catalog swap's new event, the benchmarks
and unit tests; ``export.build_ensemble`` for the swap, the benchmarks and unit tests), these tests
check that the notebook's version gives identical outputs to the package's one definition.
"""
import hashlib

import numpy as np
import pandas as pd
import pytest

from gtcrec import data, etl
from gtcrec.serving import client as cl
from gtcrec.serving import export as ex

pytestmark = pytest.mark.notebooks


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
