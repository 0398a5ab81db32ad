"""Scenario identifiers: which runs are comparable.

A *scenario* is everything that decides the data a method sees and how results are measured:
the run's config minus the keys that name the method or do not change results. The rule:

- always excluded (:data:`EXCLUDED_KEYS`): ``strategy`` (the method and all its parameters),
  ``seed`` (the repetition), ``output_dir`` (where results go), ``tracking`` (wandb, plots,
  progress), ``runtime`` (in process or on Ray: the same seed gives the same result on every
  runtime, up to floating-point differences from thread counts), ``checkpoint_every`` and
  ``resume`` (saving and continuing a run do not change its result), ``limits`` (checks before a
  run);
- excluded as well when a benchmark suite tunes them (e.g. ``train.lr``): the tuned keys, so that
  a strategy run with its tuned learning rate stays in the scenario of the others;
- everything else is part of the scenario: dataset, model, partition (with
  ``partition.validation_fraction``: tuning runs on a validation partition form their own
  scenario), ``num_rounds``, the other ``train.*`` keys (local epochs, steps, batch size) and
  an injected ``fault`` (``fault: none``, an honest federation, is left out: the ids of honest
  runs are those of configs from before faults existed).

The identifier is the first 10 hex digits of the SHA-256 of the remaining config as canonical JSON
(sorted keys), with a readable name beside it (a suite's scenario name, or one derived from the
config). Runs share a scenario exactly when their configs agree outside the excluded keys, so ids
compare runs made with the same config schema (a new config key changes every id).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

EXCLUDED_KEYS = (
    "strategy",
    "seed",
    "output_dir",
    "tracking",
    "runtime",
    "checkpoint_every",
    "resume",
    "limits",
)
"""Top-level config keys that never belong to a scenario (module docstring)."""
ID_LENGTH = 10


def without_keys(raw: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """A deep copy of ``raw`` without the dotted ``keys`` (``train.lr`` drops ``raw['train']['lr']``;
    a key that is not there is ignored)."""
    kept: dict[str, Any] = copy.deepcopy(dict(raw))
    for key in keys:
        *parents, last = key.split(".")
        node: Any = kept
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return kept


def scenario_id(raw: Mapping[str, Any], excluded: Iterable[str] = EXCLUDED_KEYS) -> str:
    """SHA-256 (first :data:`ID_LENGTH` hex digits) of ``raw`` without ``excluded``, as canonical
    JSON."""
    kept = without_keys(raw, excluded)
    if isinstance(kept.get("fault"), Mapping) and kept["fault"].get("name") == "none":
        del kept["fault"]
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


def default_name(raw: Mapping[str, Any]) -> str:
    """A readable scenario name from the config: ``<dataset>-<assignment>-<split>-<S>silos``
    (``...-silos_per_id`` when the split finds the silos in the data, ``num_silos`` null;
    ``<dataset>-from_file`` for a saved partition; ``-validation`` for a validation partition)."""
    dataset = _name(raw.get("dataset"))
    partition = raw.get("partition")
    if not isinstance(partition, Mapping):
        return dataset
    if "path" in partition:
        return f"{dataset}-from_file"
    parts = [
        dataset,
        _name(partition.get("assignment")),
        _name(partition.get("split")),
        "silos_per_id" if partition.get("num_silos") is None else f"{partition['num_silos']}silos",
    ]
    if partition.get("validation_fraction"):
        parts.append("validation")
    return "-".join(parts)


def _name(node: Any) -> str:
    return str(node.get("name", "?")) if isinstance(node, Mapping) else "?"


def scenario_of(
    raw: Mapping[str, Any], also_excluded: Iterable[str] = (), name: str | None = None
) -> dict[str, Any]:
    """``summary.json``'s ``scenario``: ``{"id", "name", "excluded"}`` for config ``raw``, leaving
    out :data:`EXCLUDED_KEYS` and ``also_excluded`` (the keys a suite tunes)."""
    excluded = sorted(set(EXCLUDED_KEYS) | set(also_excluded))
    return {
        "id": scenario_id(raw, excluded),
        "name": name or default_name(raw),
        "excluded": excluded,
    }
