"""The report: ``report.md`` and its plots from a finished run folder.

:mod:`.data` reads and validates ``results.json``; :mod:`.plots` draws; :mod:`.sections`
writes the Markdown and calls both (:func:`write_report`).
"""

from vardecouple.report.data import load_results
from vardecouple.report.plots import PLOTS
from vardecouple.report.sections import SECTIONS, write_report

__all__ = ["PLOTS", "SECTIONS", "load_results", "write_report"]
