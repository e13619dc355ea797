"""The live event: what attendees click while the event runs.

* ``gtcrec.live.clicklog``: :func:`read_click_log` reads the click log the served model writes
  (``TritonServer(click_log=...)``, ``gtcrec-serve --click-log``; the writer is
  :class:`gtcrec.serving.executor_model.ClickLog`), and click files other applications drop into the
  same folder, into one clicks table; :func:`log_stats` sums the writers' counters.
"""
from gtcrec.live.clicklog import log_stats, read_click_log

__all__ = ["read_click_log", "log_stats"]
