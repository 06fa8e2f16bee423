"""Figures and self-contained HTML reports (matplotlib), imported only by the commands that draw them.

* :mod:`longiseg.reports.lesion_report`: the lesion-evolution report of ``longiseg lesions``.

``import longiseg`` never imports this package or matplotlib.
"""
