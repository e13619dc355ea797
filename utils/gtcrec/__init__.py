"""gtcrec: the library behind the GTC-like session recommender notebook series.

One module per stage: ``layout`` (the code layout: reserved codes and the list column, imports
nothing), ``data`` (a package: words, latent, generator, oracle, formats), ``embeddings``
(offline text vectors), ``etl`` (NVTabular with an existing vocabulary), ``loader``
(merlin-dataloader), ``model`` / ``baselines`` / ``metrics`` (Transformers4Rec and honest
baselines), ``serving`` (Merlin Systems operators, export, Triton server manager, client),
``swap`` (a package: repository, catalog, switch, traffic, quality, cli; catalog swap and hot
reload), ``manifest`` (the notebook contract), ``series`` (runs every notebook with papermill).
"""

__version__ = "0.1.0"
