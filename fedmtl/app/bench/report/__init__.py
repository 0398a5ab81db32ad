"""``fedmtl report DIR... --out OUT``: tables, statistics and plots from any run directories
(:func:`build_report`; :func:`main` is the command)."""

from fedmtl.app.bench.report.build import Report, build_report, main

__all__ = ["Report", "build_report", "main"]
