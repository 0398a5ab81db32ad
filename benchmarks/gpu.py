"""Clients per second and memory per client of vectorised local training, on a GPU or the CPU.

Uses the local-training core only (``fedmtl.core``, ``fedmtl.datasets.synthetic``,
``fedmtl.trunks``): it runs where only torch and numpy are installed (no Flower, Ray or Hydra),
e.g. on a GPU machine lent for a short run. For each number of silos S it builds S silos of
``--rows`` training rows of the ``synthetic`` dataset (each labels 2 of its tasks), keeps their
data on the device, and times one round of local training of all of them by
:func:`fedmtl.core.vectorized.train_vectorized` (in batches of ``--max-silos``), after a warm-up
round. It prints and writes (``benchmarks/results/gpu.csv`` and ``.json``):

- ``clients_per_s``: S / the round's wall time (vectorised), and the same for the sequential loop
  (``train_local`` silo by silo, on the first ``--sequential`` silos);
- ``mb_per_client``: on CUDA the peak memory allocated during the round / S; on the CPU the growth
  of the process's peak resident memory / S (a rough figure).

    python benchmarks/gpu.py                                 # S = 10, 100, 1000 on cuda if visible
    python benchmarks/gpu.py --device cpu --silos 10 100 --precision bfloat16
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import quiet_machine_note, write_results

from fedmtl.core.data import LocalData, local_view
from fedmtl.core.models import MultiTaskModel
from fedmtl.core.schema import ModelConfig, TrainConfig
from fedmtl.core.tasks import TaskSpec
from fedmtl.core.training import mean_task_losses, train_local
from fedmtl.core.vectorized import SiloJob, train_vectorized
from fedmtl.datasets.synthetic import SyntheticParams, build_synthetic
from fedmtl.trunks import MLPParams, build_model

RESULTS = Path(__file__).resolve().parent / "results"


def silos(
    count: int, rows: int, device: torch.device
) -> tuple[list[LocalData], tuple[TaskSpec, ...]]:
    """``count`` silos of ``rows`` consecutive rows each, silo i labelling tasks i and i+1 (mod
    T), their data on ``device``; and the dataset's tasks."""
    dataset = build_synthetic(SyntheticParams(num_samples=max(2, count * rows)), seed=0)
    names = dataset.task_names
    datas = [
        local_view(
            dataset,
            np.arange(i * rows, (i + 1) * rows),
            [names[i % len(names)], names[(i + 1) % len(names)]],
        ).to(device)
        for i in range(count)
    ]
    return datas, dataset.tasks


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vectorised_round(
    model: MultiTaskModel, datas: list[LocalData], cfg: TrainConfig, args: argparse.Namespace
) -> float:
    start = {k: v.detach() for k, v in model.named_parameters()}
    jobs = [SiloJob(data, seed, start) for seed, data in enumerate(datas)]
    began = time.perf_counter()
    for first in range(0, len(jobs), args.max_silos):
        train_vectorized(
            model, jobs[first : first + args.max_silos], cfg, args.mode, args.precision
        )
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - began


def sequential_round(
    model: torch.nn.Module, datas: list[LocalData], cfg: TrainConfig, mode: str
) -> float:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    began = time.perf_counter()
    for seed, data in enumerate(datas):
        model.load_state_dict(state)
        mean_task_losses(model, data)  # type: ignore[arg-type]
        train_local(model, data, cfg, torch.Generator().manual_seed(seed), update_mode=mode)  # type: ignore[arg-type]
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    model.load_state_dict(state)
    return time.perf_counter() - began


def measure(count: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    datas, tasks = silos(count, args.rows, device)
    cfg = TrainConfig(local_epochs=args.epochs, batch_size=args.batch_size)
    shape = tuple(datas[0].inputs.shape[1:])
    model = build_model(ModelConfig("mlp", MLPParams(hidden=args.hidden)), shape, tasks, seed=0)
    model = model.to(device)
    vectorised_round(model, datas[: min(count, 4)], cfg, args)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    before = rss_mb()
    seconds = vectorised_round(model, datas, cfg, args)
    if device.type == "cuda":
        per_client = (torch.cuda.max_memory_allocated(device) - base) / 2**20 / count
    else:
        per_client = (rss_mb() - before) / count
    sequential = datas[: min(count, args.sequential)]
    sequential_s = sequential_round(model, sequential, cfg, args.mode)
    return {
        "device": str(device),
        "precision": args.precision,
        "mode": args.mode,
        "silos": count,
        "rows_per_silo": args.rows,
        "round_s": round(seconds, 4),
        "clients_per_s": round(count / seconds, 1),
        "sequential_clients_per_s": round(len(sequential) / sequential_s, 1),
        "speedup": round((count / seconds) / (len(sequential) / sequential_s), 2),
        "mb_per_client": round(per_client, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silos", nargs="+", type=int, default=[10, 100, 1000])
    parser.add_argument("--rows", type=int, default=64, help="training rows per silo")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--precision", default="float32", choices=["float32", "bfloat16", "float16"]
    )
    parser.add_argument("--mode", default="joint", choices=["joint", "per_task"])
    parser.add_argument("--hidden", nargs="+", type=int, default=[128, 64])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-silos", type=int, default=1024, help="silos per batched call")
    parser.add_argument("--sequential", type=int, default=50, help="silos timed sequentially")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise SystemExit("--device cuda: no CUDA GPU is visible here")
    device = torch.device(
        "cuda" if args.device == "auto" and cuda else args.device.replace("auto", "cpu")
    )
    if device.type == "cpu":
        print("no GPU in use: running on the CPU (figures are CPU figures)", flush=True)
    note = quiet_machine_note()
    rows = []
    for count in args.silos:
        rows.append(measure(count, args, device))
        print(json.dumps(rows[-1]), flush=True)
    write_results(args.out, "gpu", rows, **note, command_args=vars(args) | {"out": None})


if __name__ == "__main__":
    main()
