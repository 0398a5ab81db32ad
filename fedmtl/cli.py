"""The ``fedmtl`` command.

``fedmtl run [key=value ...]`` composes ``configs/`` with Hydra, validates it and runs the
experiment; ``fedmtl partition [key=value ...]`` builds only the partition of the same config and
writes ``partition.json``, ``partition_stats.csv`` and its plots. ``hydra.run.dir=DIR`` chooses the
output directory. A bad value stops either command before any work with a message naming the key
(exit status 2).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

USAGE = """usage: fedmtl COMMAND [key=value ...]

commands:
  run        train an experiment (Hydra overrides, e.g. dataset=synthetic num_rounds=5
             runtime=inprocess hydra.run.dir=/tmp/x); `fedmtl run --help` lists config groups
  partition  build the partition only (e.g. partition=dirichlet_0.1 hydra.run.dir=/tmp/p) and
             write partition.json, partition_stats.csv and PNGs; prints the stats table
"""


def config_dir() -> str:
    """Absolute path of the installed ``configs`` package."""
    return str(files("configs"))


def compose(overrides: list[str], output_dir: str | Path = ".") -> dict[str, Any]:
    """The raw config mapping that ``fedmtl run [overrides]`` builds, without running anything
    (for scripts and tests; ``hydra.*`` overrides other than those of the config are ignored)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    raw = {str(key): value for key, value in container.items()}
    raw.pop("hydra", None)
    raw.pop("experiment", None)
    raw["output_dir"] = str(output_dir)
    return raw


def _hydra_command(name: str, task: Callable[[Any], None], overrides: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from fedmtl.config import parse
    from fedmtl.errors import ConfigError
    from fedmtl.runtime import set_offline_env

    set_offline_env()

    @hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        raw = {str(key): value for key, value in container.items()}
        raw.pop("experiment", None)
        raw["output_dir"] = HydraConfig.get().runtime.output_dir
        quiet_third_party_logs()
        try:
            task(parse(raw))
        except ConfigError as err:
            print(f"fedmtl {name}: invalid config: {err}", file=sys.stderr)
            sys.exit(2)

    sys.argv = [f"fedmtl {name}", *overrides]
    _main()


class _DropRunSimulationDeprecation(logging.Filter):
    """fedmtl starts simulations through ``flwr.simulation.run_simulation`` on purpose (the apps are
    built in this process from the composed config); Flower's notice that it prefers ``flwr run``
    is not for fedmtl's users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()


def quiet_third_party_logs() -> None:
    """Keep the console to fedmtl's progress and results: Flower at INFO, no plugin chatter."""
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.INFO)
    flwr_logger.addFilter(_DropRunSimulationDeprecation())
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _run(config: Any) -> None:
    from fedmtl.runtime import run

    log = logging.getLogger("fedmtl")
    summary = run(config)
    log.info("results in %s", config.output_dir)
    lines = [f"results: {config.output_dir}"]
    sections = [("personal test splits", summary["final"])]
    if summary.get("global"):
        held_out = summary["global"]
        sections.append((f"global test set ({held_out['num_samples']})", held_out["final"]))
    for title, final in sections:
        lines.append(f" {title}:")
        for task, metrics in final.items():
            primary = summary["task_info"][task]["primary_metric"]
            chance = summary["task_info"][task]["chance"]
            lines.append(f"  {task:<14} {primary} {metrics[primary]:.4f}   (chance {chance:.4f})")
    print("\n".join(lines))


def _partition(config: Any) -> None:
    from fedmtl.experiment import build_data
    from fedmtl.tracking import PARTITION_FILE
    from partitions.stats import print_table, write_report

    dataset, partition = build_data(config)
    out = Path(config.output_dir)
    partition.save(out / PARTITION_FILE)
    rows = write_report(dataset, partition, out)
    held_out = len(partition.global_test_indices)
    print_table(rows, f"{dataset.name}: {partition.num_silos} silos, global test set {held_out}")
    print(f"partition: {out}")


COMMANDS: dict[str, Callable[[Any], None]] = {"run": _run, "partition": _partition}


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, overrides = args[0], args[1:]
    if command not in COMMANDS:
        print(f"fedmtl: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    _hydra_command(command, COMMANDS[command], overrides)


if __name__ == "__main__":
    main()
