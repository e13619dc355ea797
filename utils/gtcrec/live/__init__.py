"""The live event: what attendees click while the event runs, and what the served model learns from it.

* ``gtcrec.live.clicklog``: :func:`read_click_log` reads the click log the served model writes
  (``TritonServer(click_log=...)``, ``gtcrec-serve --click-log``; the writer is
  :class:`gtcrec.serving.click_log.ClickLog`), and click files other applications drop into the
  same folder, into one clicks table; :func:`log_stats` sums the writers' counters.
* ``gtcrec.live.screen``: :func:`screen` sets aside the logged sessions that look scripted, or pass
  what one client may move, before a cycle learns (and says what, and why).
* ``gtcrec.live.adapt``: :func:`gtcrec.live.adapt.adapt` chooses, on the newest logged sessions, what the clicks teach the
  swapped model (popularity, co-occurrence, a bounded fine-tune) and whether it beats the version serving.
* ``gtcrec.live.cycle``: :func:`run_cycle` reads the log, adapts and hot-loads the result through the swap's
  machinery; ``gtcrec-adapt`` repeats it.
"""
from gtcrec.live.adapt import observe, read_cycles  # the module gtcrec.live.adapt holds adapt()
from gtcrec.live.clicklog import log_stats, read_click_log
from gtcrec.live.cycle import LIVE_MODELS, run_cycle
from gtcrec.live.screen import screen

__all__ = ["read_click_log", "log_stats", "observe", "read_cycles", "run_cycle", "screen", "LIVE_MODELS"]
