"""The MMoE paper's synthetic experiment trained centrally, with fedmtl's own pieces: the data of
``dataset=mmoe_synthetic``, the models of ``model=mlp`` (the shared bottom) and ``model=mmoe``,
and :func:`fedmtl.core.training.train_local` run once over every epoch (one optimizer for the
whole training, unlike a federated run, whose silos start a fresh optimizer every round).

Ma et al. (KDD 2018, section 3.2): two regression tasks whose correlation is rho; the paper's
finding is that as rho falls a shared bottom degrades and MMoE much less. The sizes are the
paper's (a shared bottom of 113 units; 8 experts of 16 units; towers of 8 units on both) and the
suite ``mmoe_paper``'s data and optimiser (4,000 samples of which 3,000 train and 1,000 test,
Adam at lr 0.01, batches of 32). For each rho, model and seed (the seed draws the samples, the
initialisation and the batch order; the task pair is the same for every seed) and each number of
``--epochs`` (trained from the initialisation, one optimizer throughout), the test R^2 of each
task.

Writes ``benchmarks/results/mmoe_central.csv`` (one row per rho, model, seed and checkpoint) and
``.json`` (also, per rho, model and number of epochs, the mean and the 95% CI of y1's and y2's R^2).

    python benchmarks/mmoe_central.py                      # rho 0.5, 0.9, 1.0; seeds 0-9
    python benchmarks/mmoe_central.py --seeds 3 --epochs 5 15
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import scipy.stats
import torch
from _common import write_results

from fedmtl.core.data import LocalData
from fedmtl.core.registry import PluginConfig
from fedmtl.core.schema import ModelConfig, TrainConfig
from fedmtl.core.training import evaluate, train_local
from fedmtl.datasets.mmoe_synthetic import MMoESyntheticParams, build_mmoe_synthetic
from fedmtl.trunks import build_model
from fedmtl.trunks.mlp import MLPParams
from fedmtl.trunks.mmoe import MMoEParams

OUT = Path(__file__).resolve().parent / "results"
SAMPLES, TRAIN = 4000, 3000
MODELS = {
    "shared_bottom": ModelConfig(name="mlp", params=MLPParams(hidden=[113]), head_hidden=8),
    "mmoe": ModelConfig(
        name="mmoe",
        params=MMoEParams(num_experts=8, expert=PluginConfig("mlp", MLPParams(hidden=[16]))),
        head_hidden=8,
    ),
}


def split(rho: float, seed: int) -> tuple[LocalData, LocalData]:
    data = build_mmoe_synthetic(
        MMoESyntheticParams(correlation=rho, num_samples=SAMPLES), seed=seed
    )

    def rows(part: slice) -> LocalData:
        return LocalData(
            inputs=data.inputs[part],
            targets={k: v[part] for k, v in data.targets.items()},
            mask=data.mask[part],
            tasks=data.tasks,
        )

    return rows(slice(0, TRAIN)), rows(slice(TRAIN, SAMPLES))


def r2(model: Any, test: LocalData) -> dict[str, float]:
    sums = evaluate(model, test)
    return {t.name: t.finalize_metrics(sums[t.name])["r2"] for t in test.tasks}


def one_run(rho: float, name: str, seed: int, epochs: int) -> dict[str, Any]:
    """Train model ``name`` from its seeded initialisation for ``epochs`` epochs in one call of
    :func:`train_local` (one optimizer throughout), then its test R^2 per task."""
    train, test = split(rho, seed)
    model = build_model(MODELS[name], (100,), train.tasks, seed=seed)
    cfg = TrainConfig(local_epochs=epochs, batch_size=32, optimizer="adam", lr=0.01)
    started = time.perf_counter()
    train_local(model, train, cfg, torch.Generator().manual_seed(seed))
    scores = r2(model, test)
    return {
        "rho": rho,
        "model": name,
        "seed": seed,
        "epochs": epochs,
        "y1_r2": round(scores["y1"], 6),
        "y2_r2": round(scores["y2"], 6),
        "seconds": round(time.perf_counter() - started, 2),
    }


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rho, model and number of epochs: mean and 95% CI half-width (Student's t) of each R^2."""
    groups: dict[tuple[float, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["rho"], row["model"], row["epochs"]), []).append(row)
    result = []
    for (rho, model, epochs), members in sorted(groups.items()):
        entry: dict[str, Any] = {"rho": rho, "model": model, "epochs": epochs, "n": len(members)}
        for task in ("y1", "y2"):
            values = [m[f"{task}_r2"] for m in members]
            mean = statistics.fmean(values)
            half = (
                scipy.stats.t.ppf(0.975, len(values) - 1)
                * statistics.stdev(values)
                / len(values) ** 0.5
                if len(values) > 1
                else float("nan")
            )
            entry[f"{task}_r2_mean"] = round(mean, 4)
            entry[f"{task}_r2_ci95"] = round(half, 4)
        result.append(entry)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rhos", type=float, nargs="+", default=[1.0, 0.9, 0.5])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, nargs="+", default=[15])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for rho in args.rhos:
        for name in MODELS:
            for seed in range(args.seeds):
                for epochs in args.epochs:
                    rows.append(one_run(rho, name, seed, epochs))
                    print(rows[-1], flush=True)
    write_results(args.out, "mmoe_central", rows, summary=summary(rows))


if __name__ == "__main__":
    main()
