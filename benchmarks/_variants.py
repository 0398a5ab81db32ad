"""Runs of one experiment in variants (a change of config against the first variant): bytes up
and down and each task's final primary metric, and how far each variant moves them."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from tqdm import tqdm

from fedmtl.app.launch import run
from fedmtl.app.run.config import compose, parse


def bytes_and_metrics(overrides: list[str]) -> dict[str, Any]:
    """One in-process run of ``overrides`` (in a temporary directory): its bytes up and down and
    each task's final primary metric (``<task>_<metric>``)."""
    with tempfile.TemporaryDirectory() as out:
        summary = run(parse(compose(["runtime=inprocess", "tracking=quiet", *overrides], out)))
    row: dict[str, Any] = {"bytes_up": summary["bytes_up"], "bytes_down": summary["bytes_down"]}
    for task in summary["tasks"]:
        metric = summary["task_info"][task]["primary_metric"]
        row[f"{task}_{metric}"] = round(summary["final"][task][metric], 5)
    return row


def variant_rows(
    column: str,
    variants: Mapping[str, list[str]],
    seeds: list[int],
    base: Callable[[int], list[str]],
) -> list[dict[str, Any]]:
    """For each seed and variant (its name in ``column``): :func:`bytes_and_metrics` of
    ``base(seed)`` plus the variant's overrides, its bytes up as a share of the first variant's
    (``bytes_up_vs_<first>``) and the largest change of a final metric from it."""
    reference = next(iter(variants))
    rows: list[dict[str, Any]] = []
    cells = [(seed, name) for seed in seeds for name in variants]
    for seed, name in tqdm(cells, desc="runs", unit="run"):
        row = {column: name, "seed": seed, **bytes_and_metrics([*base(seed), *variants[name]])}
        first = next((r for r in rows if r["seed"] == seed and r[column] == reference), row)
        metrics = [k for k in row if k not in (column, "seed", "bytes_up", "bytes_down")]
        row[f"bytes_up_vs_{reference}"] = round(row["bytes_up"] / first["bytes_up"], 4)
        row["max_abs_metric_change"] = round(max(abs(row[k] - first[k]) for k in metrics), 5)
        tqdm.write(json.dumps(row))
        rows.append(row)
    return rows
