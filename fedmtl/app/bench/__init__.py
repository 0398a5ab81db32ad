"""The benchmark room: ``fedmtl bench`` and ``fedmtl report``.

- :mod:`fedmtl.app.bench.suite`: suite files (``configs/bench/*.yaml``), parsed and checked;
- :mod:`fedmtl.app.bench.runner`: ``fedmtl bench``, a suite's grid of runs, tuned and resumable;
- :mod:`fedmtl.app.bench.stats`: Delta_MTL, confidence intervals, the paired test, silo quantiles;
- :mod:`fedmtl.app.bench.report`: ``fedmtl report``, tables, statistics and plots from any runs.

Importing this package imports none of them (the report needs no training machinery).
"""
