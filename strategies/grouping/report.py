"""Result files of task grouping: ``affinity.json`` and its heatmap ``affinity.png``."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

AFFINITY_FILE = "affinity.json"
HEATMAP_FILE = "affinity.png"


def matrix_json(matrix: np.ndarray) -> list[list[float | None]]:
    """A matrix as nested lists, NaN as null (JSON has no NaN)."""
    return [[None if math.isnan(v) else float(v) for v in row] for row in matrix.tolist()]


def write_affinity(output_dir: Path, report: dict[str, Any]) -> Path:
    """``affinity.json``: the ``report`` (matrices already JSON-ready)."""
    path = output_dir / AFFINITY_FILE
    path.write_text(json.dumps(report, indent=2))
    return path


def plot_affinity(
    matrix: np.ndarray,
    tasks: Sequence[str],
    groups: Sequence[Sequence[int]] | None,
    out: Path,
    title: str,
) -> Path:
    """Heatmap of ``matrix`` (row = source, column = target), tasks ordered group by group with
    each group framed; uncovered entries (NaN) grey and marked "n/a"."""
    import matplotlib  # noqa: PLC0415 - heavy, only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - heavy, only when plotting
    from matplotlib.patches import Rectangle  # noqa: PLC0415 - heavy, only when plotting

    order = [t for group in groups for t in group] if groups else list(range(len(tasks)))
    order += [t for t in range(len(tasks)) if t not in order]
    shown = matrix[np.ix_(order, order)]
    finite = shown[np.isfinite(shown)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    size = 1.2 + 0.55 * len(tasks)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, vmin=-bound, vmax=bound)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    labels = [tasks[t] for t in order]
    ax.set_xticks(range(len(order)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(order)), labels)
    ax.set_xlabel("target task j")
    ax.set_ylabel("source task i")
    if len(tasks) <= 16:
        for (r, c), value in np.ndenumerate(shown):
            if r != c:
                text = "n/a" if math.isnan(value) else f"{value:.2g}"
                ax.text(c, r, text, ha="center", va="center", fontsize=7)
    start = 0
    for group in groups or []:
        ax.add_patch(
            Rectangle(
                (start - 0.5, start - 0.5),
                len(group),
                len(group),
                fill=False,
                edgecolor="black",
                linewidth=2,
            )
        )
        start += len(group)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
