"""gtcrec: the library behind the GTC-like session recommender notebook series.

One module per stage: ``data`` (generator, oracle, file formats, validation), ``embeddings``
(offline text vectors), ``etl`` (NVTabular with an existing vocabulary), ``loader``
(merlin-dataloader), ``model`` / ``baselines`` / ``metrics`` (Transformers4Rec and honest
baselines), ``serving`` (Merlin Systems operators, export, Triton server manager, client),
``swap`` (catalog swap and hot reload), ``manifest`` (the notebook contract), ``series``
(runs every notebook with papermill).
"""

__version__ = "0.1.0"
