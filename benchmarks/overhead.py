"""fedmtl's overhead: its round time against a bare torch loop doing the same local work, per
runtime, and Flower's simulation floor (a no-op ClientApp moving the same bytes).

For each number of silos N (all sampled every round; ``--rows`` training rows each, ``synthetic``
data, the default MLP and local training), every measurement runs in a fresh process:

- ``bare``: the same silos' data and model, trained by a plain torch loop in one process: per silo
  copy the global weights, a fresh SGD, the local epochs of masked multi-task loss steps, and the
  example-weighted average of the updates (no messages, no checks, no loss before training);
- ``inprocess``, ``vectorized``, ``simulation``: ``fedmtl run`` on that runtime (its
  ``metrics.jsonl`` round seconds: train, aggregate; evaluation only in the last round);
- ``flower_noop``: ``flwr.simulation.run_simulation`` with a ClientApp that echoes the arrays it
  receives (the model's size) and a ServerApp that sends them to every node each round: what any
  Flower app pays per message and to start.

A round's time is the median of rounds 2 .. R-1 (round 1 warms up; the last one evaluates).
Start-up is from the call that starts the run (after imports) to the end of round 1, less a
typical round: set-up, the runtime's start, discovery and round 1's warm-ups. Writes
``benchmarks/results/overhead.csv`` (one row per N and runtime: round time, its ratio to the bare
loop, start-up) and ``.json`` (also the load average at the start, and per N the simulation goals:
round / (floor round + in-process round) and start-up minus the floor's start-up).

    python benchmarks/overhead.py                       # N = 10 and 100
    python benchmarks/overhead.py --silos 10 --runtimes inprocess vectorized --rounds 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _common import quiet_machine_note, run_json, synthetic_run, write_results
from _timed_run import startup
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from tqdm import tqdm

from fedmtl.app.run.config import compose, parse
from fedmtl.app.run.experiment import prepare
from fedmtl.core import records

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNTIMES = ("inprocess", "vectorized", "simulation")


def overrides(runtime: str, silos: int, rows: int, rounds: int) -> list[str]:
    """Every silo sampled; evaluation only in the last round."""
    return [
        *synthetic_run(runtime, silos, rows, rounds),
        f"strategy.evaluate_every={rounds}",
        f"strategy.min_available_nodes={min(silos, 2)}",
    ]


def middle(seconds: list[float]) -> float:
    """The median of rounds 2 .. R-1 (all rounds when there are fewer than 3)."""
    inner = seconds[1:-1] if len(seconds) >= 3 else seconds
    return statistics.median(inner)


# ------------------------------------------------------------------------- children (fresh process)
def bare_loop(silos: int, rows: int, rounds: int) -> dict[str, Any]:
    """The same local work in plain torch (module docstring); times each round."""
    begin = time.perf_counter()
    config = parse(compose(overrides("inprocess", silos, rows, rounds)))
    experiment = prepare(config)
    cfg = config.train
    datas = [experiment.silo_data(s, "train") for s in range(silos)]
    model = experiment.new_model()
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    setup = time.perf_counter() - begin
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        total = {k: torch.zeros_like(v) for k, v in global_state.items()}
        weights = dict.fromkeys(global_state, 0.0)
        for data in datas:
            model.load_state_dict(global_state)
            names = [t.name for t in data.tasks]
            params = list(model.trunk.parameters())
            params += [p for n in names for p in model.heads[n].parameters()]
            optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
            for _ in range(cfg.local_epochs):
                order = torch.randperm(data.num_samples, generator=generator)
                for start in range(0, data.num_samples, cfg.batch_size):
                    batch = order[start : start + cfg.batch_size]
                    outputs = model(data.inputs[batch], names)
                    losses = []
                    for i, task in enumerate(data.tasks):
                        mask = data.mask[batch, i]
                        if bool(mask.any()):
                            target = data.targets[task.name][batch][mask]
                            losses.append(task.loss(outputs[task.name][mask], target))
                    if not losses:
                        continue
                    optimizer.zero_grad()
                    sum(losses).backward()  # type: ignore[union-attr]
                    optimizer.step()
            with torch.no_grad():
                for key, value in model.state_dict().items():
                    owner = key.split(".")[1] if key.startswith("heads.") else None
                    if owner is None or owner in names:
                        total[key] += data.num_samples * (value - global_state[key])
                        weights[key] += data.num_samples
        global_state = {
            k: v + total[k] / weights[k] if weights[k] else v for k, v in global_state.items()
        }
        seconds.append(time.perf_counter() - started)
    return {"first_round_end_s": setup + seconds[0], "rounds_s": seconds}


def flower_noop(silos: int, rows: int, rounds: int) -> dict[str, Any]:
    """Flower's simulation with a ClientApp that echoes what it receives (module docstring)."""
    # Ray comes with it: only the floor's child process pays for the import.
    from flwr.simulation import run_simulation  # noqa: PLC0415 - heavy (Ray), floor child only

    model = prepare(parse(compose(overrides("simulation", silos, rows, rounds)))).new_model()
    payload = records.to_array_record(records.state_arrays(model, model.exchanged_keys()))
    client = ClientApp()

    @client.train()
    def echo(message: Message, context: Context) -> Message:
        return Message(
            RecordDict({"arrays": message.content.array_records["arrays"]}), reply_to=message
        )

    server = ServerApp()
    dispatched: list[float] = []
    seconds: list[float] = []

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        while len(list(grid.get_node_ids())) < silos:
            time.sleep(0.05)
        nodes = list(grid.get_node_ids())
        for server_round in range(1, rounds + 1):
            started = time.perf_counter()
            dispatched.append(started)
            messages = [
                Message(
                    RecordDict({"arrays": ArrayRecord(dict(payload))}),
                    dst_node_id=node,
                    message_type=MessageType.TRAIN,
                    group_id=str(server_round),
                )
                for node in nodes
            ]
            replies = list(grid.send_and_receive(messages))
            assert len(replies) == silos and not any(r.has_error() for r in replies)
            seconds.append(time.perf_counter() - started)

    begin = time.perf_counter()
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=silos,
        backend_config={
            "client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
            "init_args": {"logging_level": "ERROR", "log_to_driver": False},
        },
    )
    return {"first_round_end_s": dispatched[0] - begin + seconds[0], "rounds_s": seconds}


def child(kind: str, silos: int, rows: int, rounds: int) -> dict[str, Any]:
    result = (bare_loop if kind == "bare" else flower_noop)(silos, rows, rounds)
    return result


# --------------------------------------------------------------------------------------- parent
def measure(kind: str, silos: int, rows: int, rounds: int) -> dict[str, Any]:
    if kind in RUNTIMES:
        args = [str(HERE / "_timed_run.py"), json.dumps(overrides(kind, silos, rows, rounds))]
    else:
        args = [__file__, "--child", kind, "--silos", str(silos), "--rows", str(rows)]
        args += ["--rounds", str(rounds)]
    result = run_json(args)
    typical = middle(result["rounds_s"])
    return {
        "sampled": silos,
        "runtime": kind,
        "round_s": round(typical, 4),
        "startup_s": round(startup(result, typical), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silos", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--rows", type=int, default=64, help="training rows per silo")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-floor", action="store_true", help="skip Flower's no-op floor")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=["bare", "flower_noop"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.silos[0], args.rows, args.rounds)), flush=True)
        return

    note = quiet_machine_note()
    kinds = ["bare", *args.runtimes] + ([] if args.no_floor else ["flower_noop"])
    cells = [(n, k) for n in args.silos for k in kinds]
    rows: list[dict[str, Any]] = []
    for silos, kind in tqdm(cells, desc="runs", unit="run"):
        row = measure(kind, silos, args.rows, args.rounds)
        bare = next(r for r in [*rows, row] if r["sampled"] == silos and r["runtime"] == "bare")
        row["ratio_to_bare"] = round(row["round_s"] / bare["round_s"], 2)
        tqdm.write(json.dumps(row))
        rows.append(row)
    write_results(
        args.out,
        "overhead",
        rows,
        **note,
        goals=goals(rows),
        command_args=vars(args) | {"out": None},
    )


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per N: the simulated round against the floor's round plus the in-process round (goal
    <= 1.2), and the simulated start-up minus the floor's (goal <= 2 s)."""
    found: dict[str, Any] = {}
    for silos in sorted({r["sampled"] for r in rows}):
        by = {r["runtime"]: r for r in rows if r["sampled"] == silos}
        if {"simulation", "flower_noop", "inprocess"} <= set(by):
            floor, sim = by["flower_noop"], by["simulation"]
            found[str(silos)] = {
                "round_vs_floor_plus_inprocess": round(
                    sim["round_s"] / (floor["round_s"] + by["inprocess"]["round_s"]), 2
                ),
                "startup_minus_floor_s": round(sim["startup_s"] - floor["startup_s"], 2),
            }
    return found


if __name__ == "__main__":
    main()
