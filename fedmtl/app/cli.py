"""The ``fedmtl`` command.

``fedmtl run [key=value ...]`` composes ``configs/`` with Hydra, validates it and runs the
experiment; ``fedmtl partition [key=value ...]`` builds only the partition of the same config and
writes ``partition.json``, ``partition_stats.csv`` and its plots. ``hydra.run.dir=DIR`` chooses the
output directory. A bad value stops either command before any work with a message naming the key
(exit status 2), and leaves no output directory behind. ``fedmtl run --help`` lists the config
groups and their presets.

``fedmtl run resume=DIR`` continues the run in DIR from its last checkpoint
(:mod:`fedmtl.app.run.checkpoint`).

``fedmtl bench SUITE --out DIR`` and ``fedmtl report DIR... --out OUT`` take plain arguments
(argparse; :mod:`fedmtl.app.bench.runner`, :mod:`fedmtl.app.bench.report`) and compose their
configs with :func:`fedmtl.app.run.config.compose`.

For deployments (docs/deployment.md): ``fedmtl flwr-config [key=value ...]`` writes the same config
as Flower run config for ``flwr run`` (:mod:`fedmtl.app.deploy.flwr_config`), and ``fedmtl deploy ...``
makes certificates, node keys and demo tables and starts a local deployment
(:mod:`fedmtl.app.deploy`). ``fedmtl new KIND NAME --out DIR`` writes a plug-in package
(:mod:`fedmtl.app.scaffold`).
"""

from __future__ import annotations

import importlib
import logging
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedmtl.app.launch import run
from fedmtl.app.run.checkpoint import resumed_raw_config
from fedmtl.app.run.config import GROUP_REGISTRIES, compose, config_dir, parse, presets, raw_config
from fedmtl.app.run.experiment import build_data, is_local
from fedmtl.app.run.lock import LOCK_FILE, is_locked
from fedmtl.app.run.plugins import search_path
from fedmtl.app.run.tracking import PARTITION_FILE
from fedmtl.app.runtimes import set_offline_env
from fedmtl.core.errors import ConfigError
from fedmtl.core.schema import ExperimentConfig
from partitions.stats import print_table, write_report

USAGE = """usage: fedmtl COMMAND [key=value ...]

commands:
  run        train an experiment (Hydra overrides, e.g. dataset=synthetic num_rounds=5
             runtime=inprocess hydra.run.dir=/tmp/x); `fedmtl run --help` lists config groups;
             `fedmtl run resume=DIR` continues the run in DIR from its last checkpoint
  partition  build the partition only (e.g. partition=dirichlet_0.1 hydra.run.dir=/tmp/p) and
             write partition.json, partition_stats.csv and PNGs; prints the stats table
  bench      run a benchmark suite: fedmtl bench SUITE --out DIR (SUITE: a name in
             configs/bench/ or a path); resumable; `fedmtl bench --help`
  report     tables, statistics and plots from run directories: fedmtl report DIR... --out OUT
  flwr-config
             the same overrides as Flower run config for `flwr run . CONNECTION --run-config FILE`
             (e.g. experiment=flwr_tables dataset.schema=schema.json -o run.toml)
  deploy     certs | node-key | demo-data | local: TLS certificates, SuperNode keys, demo tables
             and a local deployment with TLS and node authentication (docs/deployment.md)
  new        new method | dataset | trunk NAME --out DIR: a plug-in package to start from, with
             its entry point, preset and a test that runs the contract kit (docs/extending.md)
"""

GROUPS = ("dataset", "model", "partition", "strategy", "runtime", "tracking", "experiment")
HYDRA_FILES = (".hydra", "fedmtl.log")
"""What Hydra writes into a run directory before fedmtl runs (its config copy and job log)."""


def help_text(command: str) -> str:
    """``fedmtl COMMAND --help``: the config groups, their presets and the top-level keys."""
    output = " [-o FILE]" if command == "flwr-config" else ""
    lines = [
        f"usage: fedmtl {command} [GROUP=PRESET ...] [KEY=VALUE ...] [hydra.run.dir=DIR]{output}",
        "",
        "config groups (choose a preset with GROUP=PRESET; set one value with GROUP.KEY=VALUE):",
    ]
    for group in GROUPS:
        lines.append(f"  {group:<11} {', '.join(presets(group))}")
    lines += [
        "",
        "registered plug-ins (the `name` a preset or GROUP.name=... selects):",
        *(f"  {key:<23} {', '.join(reg.names())}" for key, reg in GROUP_REGISTRIES.items()),
        "",
        "top-level keys: seed, num_rounds, checkpoint_every, train.{local_epochs, max_steps,",
        "  batch_size, optimizer, lr, momentum, weight_decay}, limits.memory_check (false: run",
        "  a config whose estimated memory exceeds what this machine has available)",
        "",
        "resume: fedmtl run resume=DIR [num_rounds=N runtime=... tracking...=... limits...=...]",
        "  continues the run in DIR from its checkpoint (every checkpoint_every rounds and after",
        "  the last).",
        "",
        "examples:",
        "  fedmtl run dataset=synthetic strategy=upgrad runtime=inprocess num_rounds=10",
        "  fedmtl partition partition=dirichlet_0.1 hydra.run.dir=/tmp/p",
    ]
    return "\n".join(lines)


def discard_run_dir(run_dir: Path, cwd: Path) -> None:
    """Remove a run directory that holds nothing but Hydra's own files (a run refused for its
    config), and then its parents inside ``cwd`` that this leaves empty."""
    ours = (*HYDRA_FILES, LOCK_FILE)  # the lock file of a run refused after taking it
    if not run_dir.is_dir() or any(p.name not in ours for p in run_dir.iterdir()):
        return
    if is_locked(run_dir):  # another run's, just started there
        return
    shutil.rmtree(run_dir)
    parent = run_dir.resolve().parent
    while parent != cwd and cwd in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def _hydra_command(
    name: str, task: Callable[[ExperimentConfig], None], overrides: list[str]
) -> None:
    # Hydra takes about 0.3 s to import: only commands that compose a config pay for it.
    import hydra  # noqa: PLC0415 - heavy, only when composing a config
    from hydra.core.hydra_config import HydraConfig  # noqa: PLC0415 - heavy, only when composing a config
    from omegaconf import DictConfig, OmegaConf  # noqa: PLC0415 - heavy, only when composing a config

    set_offline_env()
    cwd = Path.cwd().resolve()
    try:  # an override Hydra cannot apply fails here, before Hydra makes a run directory
        check_run_dir(overrides)
        compose(overrides)
    except ConfigError as err:
        print(f"fedmtl {name}: invalid config: {err}", file=sys.stderr)
        sys.exit(2)

    @hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        output_dir = HydraConfig.get().runtime.output_dir
        quiet_third_party_logs()
        try:
            task(parse(raw_config(container, output_dir)))
        except ConfigError as err:
            discard_run_dir(Path(output_dir), cwd)
            print(f"fedmtl {name}: invalid config: {err}", file=sys.stderr)
            sys.exit(2)

    sys.argv = [f"fedmtl {name}", *overrides, *search_path(overrides)]  # plug-ins' presets too
    _main()


def check_run_dir(overrides: list[str]) -> None:
    """``hydra.run.dir=`` with no directory would make Hydra write the run's files into the
    current directory: a ConfigError instead."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") == "hydra.run.dir" and not value.strip().strip("'\"").strip():
            raise ConfigError(
                "hydra.run.dir",
                "is empty: the run's files would be written into the current directory.",
                "give a directory (hydra.run.dir=runs/x), or leave it out for "
                "outputs/<date>/<time>/.",
            )


def _resume(overrides: list[str]) -> None:
    """``fedmtl run resume=DIR [KEY=VALUE ...]``: the run in DIR goes on from its checkpoint with
    its own config (Hydra is not involved: no new run directory); only the keys of
    :data:`~fedmtl.app.run.checkpoint.RESUMABLE_KEYS` may change."""
    set_offline_env()
    run_dir = Path([arg for arg in overrides if arg.startswith("resume=")][-1].split("=", 1)[1])
    others = [arg for arg in overrides if not arg.startswith("resume=")]
    quiet_third_party_logs()
    try:
        config = parse(resumed_raw_config(run_dir, others))
        _run(config)
    except ConfigError as err:
        print(f"fedmtl run: invalid config: {err}", file=sys.stderr)
        sys.exit(2)


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


def _run(config: ExperimentConfig) -> None:
    summary = run(config)
    if summary["status"] == "interrupted":  # a simulation stopped by a signal ends here
        print(f"fedmtl run: interrupted; results in {config.output_dir} (summary.json), continue "
              f"with `fedmtl run resume={config.output_dir}`", file=sys.stderr)  # fmt: skip
        sys.exit(130)
    if summary["status"] != "completed":
        print(f"fedmtl run: the run ended with status {summary['status']!r}; results in "
              f"{config.output_dir} (summary.json)", file=sys.stderr)  # fmt: skip
        sys.exit(1)
    logging.getLogger("fedmtl").info("results in %s", config.output_dir)
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


def _partition(config: ExperimentConfig) -> None:
    if is_local(config):
        raise ConfigError(
            "partition", "is local: the silos hold the rows, there is nothing to partition here."
        )
    dataset, partition = build_data(config)
    out = Path(config.output_dir)
    partition.save(out / PARTITION_FILE)
    rows = write_report(dataset, partition, out)
    held_out = len(partition.global_test_indices)
    print_table(rows, f"{dataset.name}: {partition.num_silos} silos, global test set {held_out}")
    print(f"partition: {out}")


COMMANDS: dict[str, Callable[[ExperimentConfig], None]] = {"run": _run, "partition": _partition}
PLAIN_COMMANDS = {"bench": "fedmtl.app.bench.runner", "report": "fedmtl.app.bench.report"}
"""Commands with plain arguments (argparse) instead of Hydra overrides: the module whose
``main(args)`` returns the exit status."""


def command_main(module: str) -> Callable[[list[str]], Any]:
    """``module.main``, imported when its command runs: ``fedmtl run`` does not load what only
    ``report`` needs (scipy's statistics, the plots), nor ``bench``, ``deploy`` or ``new``."""
    main_function: Callable[[list[str]], Any] = importlib.import_module(module).main
    return main_function


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM stops a run like Ctrl-C: the round loop ends and summary.json says interrupted."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, overrides = args[0], args[1:]
    if command in PLAIN_COMMANDS:
        set_offline_env()
        quiet_third_party_logs()
        status = command_main(PLAIN_COMMANDS[command])(overrides)
        if status:
            sys.exit(status)
        return
    if command == "deploy":  # SIGTERM and Ctrl-C stop every process it started, by id
        try:
            command_main("fedmtl.app.deploy.command")(overrides)
        except KeyboardInterrupt:
            print("fedmtl deploy: interrupted", file=sys.stderr)
            sys.exit(130)
        return
    if command == "new":
        command_main("fedmtl.app.scaffold")(overrides)
        return
    if command == "flwr-config":
        if any(arg in ("-h", "--help") for arg in overrides):
            print(help_text(command))
            return
        try:
            command_main("fedmtl.app.deploy.flwr_config")(overrides)
        except ConfigError as err:
            print(f"fedmtl flwr-config: invalid config: {err}", file=sys.stderr)
            sys.exit(2)
        return
    if command not in COMMANDS:
        print(f"fedmtl: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    if any(arg in ("-h", "--help") for arg in overrides):
        print(help_text(command))
        return
    try:
        if command == "run" and any(arg.startswith("resume=") for arg in overrides):
            _resume(overrides)
        else:
            _hydra_command(command, COMMANDS[command], overrides)
    except KeyboardInterrupt:
        print(f"fedmtl {command}: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
