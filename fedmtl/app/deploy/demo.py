"""Demo data of a deployment: three silos' own tables, each labelling a different pair of three
tasks, and the feature schema they share (``fedmtl deploy demo-data``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedmtl.datasets.schema import FeatureSchema

DEMO_TASKS = {"score": "regression", "flag": "binary", "level": "multiclass"}
DEMO_SILO_TASKS = (("score", "flag"), ("flag", "level"), ("level", "score"))
"""The tasks each demo silo labels: a different pair per silo."""


def demo_tables(directory: Path, seed: int = 0, rows: int = 160) -> tuple[list[Path], Path]:
    """Three silos' CSV tables and the feature schema they share (``schema.json``).

    Features: five numeric columns (one with missing cells) and a categorical ``region``; tasks
    (:data:`DEMO_TASKS`) depend on the features; silo i labels :data:`DEMO_SILO_TASKS` [i] only
    (the first silo leaves the other target column out, the others leave its cells empty) and
    its inputs are shifted a little. The schema is fitted on all three tables, as a consortium
    would fit it on a reference sample they agree on."""
    import pandas as pd  # noqa: PLC0415 - heavy, only for tables

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = []
    for silo, tasks in enumerate(DEMO_SILO_TASKS):
        x = rng.normal(loc=0.3 * silo, size=(rows, 5))
        region = rng.choice(["north", "south", "east"], size=rows)
        shift = np.where(region == "north", 0.5, np.where(region == "south", -0.5, 0.0))
        score = x[:, 0] - 0.5 * x[:, 1] + shift + 0.1 * rng.normal(size=rows)
        flag = (x[:, 2] + x[:, 0] + 0.2 * rng.normal(size=rows) > 0.3 * silo).astype(int)
        level = np.digitize(x[:, 3] - x[:, 4], [-0.7, 0.7])
        frame = pd.DataFrame({f"x{i}": x[:, i] for i in range(5)})
        frame.loc[rng.random(rows) < 0.05, "x4"] = np.nan
        frame["region"] = region
        labels = {"score": score, "flag": flag, "level": level}
        for task in DEMO_TASKS:
            if task in tasks:
                frame[task] = labels[task]
            elif silo > 0:
                frame[task] = np.nan  # an empty column: this silo labels none of the task
        frames.append(frame)
    paths = []
    for silo, frame in enumerate(frames):
        path = directory / f"silo{silo}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    union = pd.concat(frames, ignore_index=True)
    features = [*(f"x{i}" for i in range(5)), "region"]
    columns = {c: union[c].to_numpy() for c in features}
    columns["region"] = union["region"].to_numpy(dtype=object)
    for task in DEMO_TASKS:
        columns[task] = union[task].to_numpy(dtype=np.float64)
    schema = FeatureSchema.fit(
        columns,
        features,
        DEMO_TASKS,  # type: ignore[arg-type]
        np.arange(len(union)),
    )
    return paths, schema.save(directory / "schema.json")
