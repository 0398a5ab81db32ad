"""Single-task centralized reference scores: what one model per task reaches on all training rows.

For each dataset in ``--datasets`` a function returns rows (one per task and model): the task's
primary metric on the dataset's test rows, mean and standard deviation over ``--seeds``, next to
the chance level (the majority class of the test rows). The rows go to
``benchmarks/results/reference_scores_<dataset>.csv`` and ``.json`` (one file per dataset, so that
running one dataset leaves the others' results alone); docs/datasets.md quotes them in each
dataset's card.

    python benchmarks/reference_scores.py --datasets multimnist          # 3 seeds, cnn
    python benchmarks/reference_scores.py --datasets multimnist --seeds 0 --models cnn resnet
    python benchmarks/reference_scores.py --quick --out /tmp/ref          # tiny sizes, for tests

``multimnist``: the dataset's defaults (12,000 training composites of 4,000 base digits, 3,000
test composites of the 1,000 held-out digits; the dataset seed is the run's seed), one model per
task (the model preset's trunk and that task's head) trained on every training composite with SGD
(lr 0.01, momentum 0.9, batch 32; at lr 0.05 the test accuracy swings by 10 points from epoch to
epoch) for ``EPOCHS`` epochs, then scored on all test composites. The timings in docs/datasets.md
are with ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import write_results

from fedmtl.core.data import local_view
from fedmtl.core.registry import build_dataclass
from fedmtl.core.schema import ModelConfig, TrainConfig
from fedmtl.core.training import evaluate, train_local
from fedmtl.datasets import DATASETS, build_dataset
from fedmtl.trunks import TRUNKS, build_model

RESULTS = Path(__file__).resolve().parent / "results"
EPOCHS = 10
MODELS = {  # the model presets' values (configs/model/*.yaml)
    "cnn": {"channels": [16, 32], "hidden": 64},
    "resnet": {},
}


def single_task_scores(
    name: str,
    dataset_values: dict[str, Any],
    models: Sequence[str],
    seeds: Sequence[int],
    train: TrainConfig,
) -> list[dict[str, Any]]:
    """One row per (task, model): a model per task trained on the training rows (not held out),
    its primary metric on the held-out rows, over ``seeds`` (dataset, model and batch order)."""
    scores: dict[tuple[str, str], list[float]] = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    info: dict[str, Any] = {}
    for seed in seeds:
        params = DATASETS.parse(name, dataset_values, "dataset")
        dataset = build_dataset(name, params, seed)
        if dataset.heldout is None:
            raise SystemExit(f"{name} has no held-out rows to score on")
        train_rows, test_rows = np.flatnonzero(~dataset.heldout), np.flatnonzero(dataset.heldout)
        info = {"train_rows": len(train_rows), "test_rows": len(test_rows)}
        for task in dataset.tasks:
            for model_name in models:
                start, cpu = time.perf_counter(), time.process_time()
                cfg = ModelConfig(
                    model_name,
                    build_dataclass(TRUNKS.get(model_name).params, MODELS[model_name], "model"),
                )
                model = build_model(cfg, dataset.input_shape, [task], seed=seed)
                generator = torch.Generator().manual_seed(seed)
                train_local(model, local_view(dataset, train_rows, [task.name]), train, generator)
                sums = evaluate(model, local_view(dataset, test_rows, [task.name]))[task.name]
                value = task.finalize_metrics(sums)[task.primary_metric.name]
                key = (task.name, model_name)
                scores.setdefault(key, []).append(value)
                spent = [time.perf_counter() - start, time.process_time() - cpu]
                seconds[key] = [
                    a + b for a, b in zip(seconds.get(key, [0.0, 0.0]), spent, strict=True)
                ]
                test_targets = dataset.targets[task.name][torch.from_numpy(test_rows)]
                info[f"chance_{task.name}"] = task.chance_level(test_targets)
                info[f"metric_{task.name}"] = task.primary_metric.name
                print(f"{name} {task.name} {model_name} seed {seed}: {value:.4f}", flush=True)
    return [
        {
            "dataset": name,
            "task": task,
            "model": model_name,
            "metric": info[f"metric_{task}"],
            "score_mean": round(statistics.mean(values), 4),
            "score_std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "seeds": len(values),
            "chance": round(info[f"chance_{task}"], 4),
            "epochs": train.local_epochs,
            "train_rows": info["train_rows"],
            "test_rows": info["test_rows"],
            "seconds_per_seed": round(seconds[(task, model_name)][0] / len(values), 1),
            "cpu_seconds_per_seed": round(seconds[(task, model_name)][1] / len(values), 1),
        }
        for (task, model_name), values in scores.items()
    ]


def multimnist(models: Sequence[str], seeds: Sequence[int], quick: bool) -> list[dict[str, Any]]:
    """MultiMNIST's ``left`` and ``right``, the dataset's defaults (``quick``: 600/200 rows, 1
    epoch)."""
    values: dict[str, Any] = {"num_train": 600, "num_test": 200} if quick else {}
    train = TrainConfig(local_epochs=1 if quick else EPOCHS, batch_size=32, lr=0.01, momentum=0.9)
    return single_task_scores("multimnist", values, models, seeds, train)


REFERENCES: dict[str, Callable[[Sequence[str], Sequence[int], bool], list[dict[str, Any]]]] = {
    "multimnist": multimnist,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="+", choices=sorted(REFERENCES), default=sorted(REFERENCES)
    )
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["cnn"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 1 epoch (tests)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    for name in args.datasets:
        rows = REFERENCES[name](args.models, args.seeds, args.quick)
        write_results(
            args.out,
            f"reference_scores_{name}",
            rows,
            setting={
                "dataset": name,
                "models": args.models,
                "seeds": args.seeds,
                "quick": args.quick,
            },
        )


if __name__ == "__main__":
    main()
