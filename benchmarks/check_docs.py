"""Check the measured figures of README.md and docs/*.md against the committed files they cite.

Rule: every figure in the docs comes from a committed result file (or a command that writes one),
and the docs name it. A results table, or a paragraph (or list) that cites results, is preceded by
an HTML comment naming its source:

    <!-- source: benchmarks/results/results_table/report.md#digits_task_subsets -->
    <!-- source: benchmarks/results/overhead.csv; view: overhead -->
    <!-- source: benchmarks/results/real_presets/tasks.csv; view: real_presets; key: scenario, task (metric) -->

Fields, separated by ``;``: the source paths (comma-separated, relative to the repository root;
``#SECTION`` after a Markdown path keeps the part of it under the first heading containing
SECTION, and ``#SECTION#SUB`` the part under SUB within it; ``?COLUMN=VALUE&...`` after a CSV
path keeps its rows with those values, and ``columns=A|B`` among them its columns A and B),
``view: NAME`` or ``view: NAME(ARG, ...)`` (how the file becomes a table, below) and
``key: COLUMN, ...`` (the columns that match a row of the doc's table to a row of the source's;
default: the first column).

**Tables.** The source becomes the expected table: a Markdown source by default gives its table with
the doc's columns (the same header, or a table holding them all); a CSV source its rows, with the
CSV columns as header; a named view (the ``VIEWS`` below) renders a result file in the doc's layout
(a pivot, a mean over seeds). Every row of the doc's table must match one row of the expected table
by its key columns, and every other cell must equal the expected cell: the same text once each
number is replaced by a placeholder (Markdown emphasis and surrounding whitespace ignored), and each
number of the doc equal to the expected number rounded as the doc rounds it (0.077 stands for 0.0765
to 0.0775). A doc table may show fewer rows and columns than its source. Columns a view does not
render are descriptions of the data, not results, and the view says so (``UNCHECKED``).

**Paragraphs.** After a source comment, each figure of the next paragraph or list must be a
number of one of the source files, as rounded in the text (a figure followed by % or "points" may
also be a fraction in the file: 20% matches 0.2; a figure written without a sign may be a
negative number of the file: "beat it by 1.27" restates a difference of -1.27). Not looked up:
integers from 0 to 99 with no sign and no %, which are counts and settings (5 seeds, 15 rounds,
lr 2); numbers inside `code`, in link targets and in version strings; and the phrases in
``NOT_FIGURES``. This finds a figure anywhere in the file, not in the row it describes: it catches
a figure that no file holds (a stale or a hand-computed one), not one copied from a wrong row.

A source comment followed by a heading or a code block is an error.

**Tables without a source.** A table that looks like results (a cell with ± or +-, or a number
followed by % or a unit: s, ms, MB, KB, GB, x; or a header naming a metric, ``METRIC_HEADER``)
must have a source comment, unless it is one of ``NOT_RESULTS`` (tables of config keys, formulas
and data descriptions).

    python benchmarks/check_docs.py            # exit 1 and a list of mismatches, else exit 0
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/*.md")

# --------------------------------------------------------------------------- numbers in text
NUMBER = re.compile(
    r"(?:(?<![\w)\].+\-^])(?P<sign>[-+−]))?"  # a sign, unless it follows a word or a bracket
    r"(?<![\w^.])"  # not inside a word (t0, R^2) or after a decimal point
    r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)"  # 1,000 or 1000
    r"(?P<frac>\.\d+)?"
    r"(?:[eE](?P<exp>[-+]?\d+))?"
    r"(?![\w.]*\d)"  # not a version (2.13.0) or an id (83d1f1d)
)
VERSION = re.compile(r"\d+(?:\.\d+){2,}\S*")
CODE = re.compile(r"`[^`]*`")
LINK_TARGET = re.compile(r"\]\([^)]*\)")
PERCENT = re.compile(r"%| percentage points?\b| points?\b")
COMMENT = re.compile(r"<!--.*?-->", re.S)
EMPHASIS = re.compile(r"\*\*|__|(?<!\w)[*_](?=\S)|(?<=\S)[*_](?!\w)")


@dataclass(frozen=True)
class Number:
    """A number as written: its value and the half-width of the interval its rounding stands for."""

    value: float
    tolerance: float
    percent: bool = False
    integer: bool = False
    signed: bool = False

    def matches(self, exact: float) -> bool:
        return abs(self.value - exact) <= self.tolerance * (1 + 1e-9) + 1e-12 * abs(exact)


def numbers(text: str) -> list[Number]:
    """The numbers written in ``text``, in order."""
    found = []
    for match in NUMBER.finditer(text):
        digits = match["int"].replace(",", "") + (match["frac"] or "")
        decimals = len(match["frac"] or "") - 1 if match["frac"] else 0
        exponent = int(match["exp"] or 0)
        value = float(digits) * 10.0**exponent
        if match["sign"] in ("-", "−"):
            value = -value
        found.append(
            Number(
                value=value,
                tolerance=0.5 * 10.0 ** (exponent - decimals),
                percent=bool(PERCENT.match(text, match.end())),
                integer=not match["frac"] and not match["exp"],
                signed=bool(match["sign"]),
            )
        )
    return found


def skeleton(text: str) -> str:
    """``text`` with every number replaced by ``#``, emphasis removed and whitespace collapsed."""
    text = EMPHASIS.sub("", text)
    return " ".join(NUMBER.sub("#", text).split())


def same_cell(doc: str, expected: str) -> str | None:
    """Why the doc's cell ``doc`` does not show ``expected`` (None when it does)."""
    if skeleton(doc) != skeleton(expected):
        return f"'{doc}' should read '{expected}'"
    for shown, exact in zip(numbers(EMPHASIS.sub("", doc)), numbers(expected), strict=True):
        if not shown.matches(exact.value):
            return f"'{doc}' should read '{expected}' (as rounded)"
    return None


# ------------------------------------------------------------------------------ Markdown
@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    line: int = 0  # 1-based line of the header in its file

    def column(self, name: str) -> int:
        return self.header.index(name)


@dataclass
class Block:
    """A table or a paragraph of a Markdown file, with the source comment just above it."""

    kind: str  # "table", "text", "heading" or "code"
    line: int
    text: str
    table: Table | None = None
    source: str | None = None


SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")


def split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [cell.strip().replace("\\|", "|") for cell in cells]


def blocks(text: str) -> list[Block]:
    """The tables and paragraphs of a Markdown text (code blocks left out), each with the source
    comment that precedes it (only blank lines between)."""
    lines = text.splitlines()
    found: list[Block] = []
    source: str | None = None
    index, fenced = 0, False
    while index < len(lines):
        line = lines[index]
        if line.lstrip().startswith("```"):
            if not fenced and source is not None:
                found.append(Block("code", index + 1, line, None, source))
                source = None
            fenced = not fenced
            index += 1
            continue
        if fenced or not line.strip():
            index += 1
            continue
        if line.lstrip().startswith("<!--"):
            start = index
            while "-->" not in lines[index] and index + 1 < len(lines):
                index += 1
            comment = " ".join(lines[start : index + 1])
            match = re.match(r"\s*<!--\s*source:\s*(.*?)\s*-->", comment, re.S)
            if match:
                source = match[1]
            index += 1
            continue
        start = index
        if (
            line.startswith("|")
            and index + 1 < len(lines)
            and SEPARATOR.match(lines[index + 1].strip())
        ):
            index += 2
            while index < len(lines) and lines[index].startswith("|"):
                index += 1
            rows = [split_row(row) for row in lines[start:index] if row.startswith("|")]
            table = Table(header=rows[0], rows=rows[2:], line=start + 1)
            kind = "table"
        else:
            while (
                index < len(lines)
                and lines[index].strip()
                and not lines[index].lstrip().startswith(("```", "<!--", "#"))
                and not lines[index].startswith("|")
            ):
                index += 1
            index = max(index, start + 1)
            table, kind = None, "heading" if line.startswith("#") else "text"
        found.append(Block(kind, start + 1, "\n".join(lines[start:index]), table, source))
        source = None
    return found


def section(text: str, name: str) -> str:
    """The part of ``text`` under the first heading containing ``name``, up to the next heading
    of the same or a higher level ('' when there is none)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        heading = re.match(r"(#+)\s", line)
        if heading and name in line:
            level = len(heading[1])
            end = index + 1
            while end < len(lines):
                other = re.match(r"(#+)\s", lines[end])
                if other and len(other[1]) <= level:
                    break
                end += 1
            return "\n".join(lines[index:end])
    return ""


# --------------------------------------------------------------------------------- sources
@dataclass
class Source:
    paths: list[Path]
    sections: list[str | None]  # per path: "A#B" (Markdown headings), or None
    filters: list[dict[str, str]]  # per path: CSV column -> value
    view: str | None = None
    args: list[str] = field(default_factory=list)
    key: list[str] = field(default_factory=list)


def parse_source(text: str, root: Path) -> Source:
    """The fields of a source comment (module docstring); ValueError on a bad one."""
    fields = [part.strip() for part in text.split(";")]
    paths, sections, filters = [], [], []
    for item in fields[0].split(","):
        item, _, query = item.strip().partition("?")
        path, _, name = item.partition("#")
        if not path:
            raise ValueError(f"empty path in '{text}'")
        resolved = (root / path).resolve()
        if not resolved.is_relative_to(root.resolve()):
            raise ValueError(f"{path} is outside the repository")
        if not resolved.is_file():
            raise ValueError(f"{path} does not exist")
        if path.split("/")[0] in ("runs", "outputs", "multirun"):
            raise ValueError(f"{path} is under an ignored output folder: commit the file instead")
        paths.append(resolved)
        sections.append(name or None)
        pairs = [pair.partition("=") for pair in query.split("&") if pair]
        if any(not sep for _, sep, _ in pairs):
            raise ValueError(f"'{query}' is not COLUMN=VALUE&...")
        filters.append({column: value for column, _, value in pairs})
    source = Source(paths, sections, filters)
    for item in fields[1:]:
        name, _, value = item.partition(":")
        name, value = name.strip(), value.strip()
        if name == "view":
            match = re.fullmatch(r"(\w+)(?:\((.*)\))?", value)
            if not match or match[1] not in VIEWS:
                raise ValueError(f"unknown view '{value}' (views: {', '.join(sorted(VIEWS))})")
            source.view = match[1]
            source.args = [a.strip() for a in (match[2] or "").split(",") if a.strip()]
        elif name == "key":
            source.key = [k.strip() for k in value.split(",")]
        else:
            raise ValueError(f"unknown field '{name}' in '{text}' (fields: view, key)")
    return source


def read_text(path: Path, name: str | None) -> str:
    text = path.read_text(encoding="utf-8")
    for part in name.split("#") if name else []:
        text = section(text, part)
        if not text:
            raise ValueError(f"{path.name} has no heading containing '{part}' (in '{name}')")
    return text


def read_csv(path: Path, where: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The rows of a CSV file: those with the values of ``where`` only, and of them only the
    columns ``where["columns"]`` names (``A|B``) when it does."""
    where = dict(where or {})
    keep = where.pop("columns", None)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    header = list(rows[0]) if rows else []
    for column in [*where, *(keep.split("|") if keep else [])]:
        if column not in header:
            raise ValueError(f"{path.name} has no column '{column}'")
    for column, value in where.items():
        rows = [row for row in rows if row[column] == value]
    if where and not rows:
        raise ValueError(f"{path.name} has no row with {where}")
    if keep:
        rows = [{column: row[column] for column in keep.split("|")} for row in rows]
    return rows


def file_numbers(
    path: Path, name: str | None = None, where: dict[str, str] | None = None
) -> list[float]:
    """Every number of a result file: each numeric CSV cell (of the rows ``where`` keeps), each
    number of a JSON file (and of its strings), each number of a text or Markdown file (under
    the headings ``name``)."""
    if path.suffix == ".csv" and name is None:
        found: list[float] = []
        for row in read_csv(path, where):
            for cell in row.values():
                found.extend(n.value for n in numbers(cell or ""))
        return found
    if path.suffix == ".json" and name is None:
        values: list[float] = []

        def walk(item: object) -> None:
            if isinstance(item, bool):
                return
            if isinstance(item, int | float):
                values.append(float(item))
            elif isinstance(item, str):
                values.extend(n.value for n in numbers(item))
            elif isinstance(item, dict):
                for key, value in item.items():
                    walk(key)
                    walk(value)
            elif isinstance(item, list):
                for value in item:
                    walk(value)

        walk(json.loads(path.read_text(encoding="utf-8")))
        return values
    text = VERSION.sub(" ", read_text(path, name))
    return [n.value for n in numbers(text)]


# ----------------------------------------------------------------------------------- views
View = Callable[[Source], Table]
VIEWS: dict[str, View] = {}
UNCHECKED: dict[str, dict[str, str]] = {}
"""view -> {doc column the view does not render: why it is not a result}."""


def view(name: str, unchecked: dict[str, str] | None = None) -> Callable[[View], View]:
    def register(function: View) -> View:
        VIEWS[name] = function
        UNCHECKED[name] = unchecked or {}
        return function

    return register


def exact(value: float) -> str:
    """A number at full precision, for an expected cell."""
    return repr(float(value))


def markdown_table(source: Source, header: list[str]) -> Table:
    """The source's table with the doc's ``header``: the same header, or a wider table holding
    every column of it (its other columns left out)."""
    text = read_text(source.paths[0], source.sections[0])
    tables = [
        b.table
        for b in blocks(text)
        if b.table is not None and all(c in b.table.header for c in header)
    ]
    if not tables:
        raise ValueError(f"{source.paths[0].name} has no table with the columns {header}")
    if len(tables) > 1:
        raise ValueError(
            f"{source.paths[0].name} has {len(tables)} tables with these columns: name a section "
            f"(PATH#HEADING)"
        )
    table = tables[0]
    keep = [table.column(c) for c in header]
    return Table(header, [[row[i] for i in keep] for row in table.rows], table.line)


def csv_table(source: Source) -> Table:
    rows = read_csv(source.paths[0], source.filters[0])
    header = list(rows[0]) if rows else []
    return Table(header, [[row[c] for c in header] for row in rows])


@view("overhead")
def overhead_view(source: Source) -> Table:
    """``benchmarks/overhead.py``'s result: per number of sampled silos, a round and the
    start-up of each runtime, with the round's ratio to the bare loop."""
    rows = read_csv(source.paths[0])
    columns = {
        "bare loop": "bare",
        "`inprocess`": "inprocess",
        "`vectorized`": "vectorized",
        "`simulation`": "simulation",
        "Flower no-op floor": "flower_noop",
    }
    out = []
    for sampled in sorted({int(r["sampled"]) for r in rows}):
        by = {r["runtime"]: r for r in rows if int(r["sampled"]) == sampled}
        rounds, startups = [f"{sampled}: round"], [f"{sampled}: start-up"]
        for runtime in columns.values():
            row = by[runtime]
            ratio = (
                f" ({exact(float(row['ratio_to_bare']))}x)"
                if runtime not in ("bare", "flower_noop")
                else ""
            )
            rounds.append(f"{exact(float(row['round_s']))} s{ratio}")
            startups.append(f"{exact(float(row['startup_s']))} s")
        out += [rounds, startups]
    return Table(["sampled silos", *columns], out)


@view("scale")
def scale_view(source: Source) -> Table:
    """``benchmarks/scale.py``'s result: per number of registered silos, the median round of each
    runtime, the peak memory (and per extra silo) and the start-up in process."""
    rows = read_csv(source.paths[0])
    silos = sorted({int(r["silos"]) for r in rows})
    by = {(r["runtime"], int(r["silos"])): r for r in rows}
    out = [
        ["`inprocess` round"] + [f"{exact(float(by['inprocess', s]['median_later_round_s']))} s" for s in silos],
        ["`vectorized` round"] + [f"{exact(float(by['vectorized', s]['median_later_round_s']))} s" for s in silos],
        ["peak memory"]
        + [
            f"{exact(float(by['inprocess', s]['peak_rss_mb']))} MB"
            + (
                f" ({exact(float(by['inprocess', s]['kb_per_extra_silo']))} KB per extra silo, its rows included)"
                if s == silos[-1]
                else ""
            )
            for s in silos
        ],
        ["start-up (`inprocess`)"] + [f"{exact(float(by['inprocess', s]['startup_s']))} s" for s in silos],
    ]  # fmt: skip
    return Table(["registered silos", *(f"{s:,}" for s in silos)], out)


@view("round_time")
def round_time_view(source: Source) -> Table:
    """``benchmarks/round_time.py``'s result: per runtime, the figures of each number of silos
    joined by ' / ' (a start-up under 0.01 s everywhere reads '< 0.01 s')."""
    rows = read_csv(source.paths[0])
    out = []
    first: list[dict[str, str]] | None = None
    for runtime in dict.fromkeys(r["runtime"] for r in rows):
        group = [r for r in rows if r["runtime"] == runtime]
        startups = [float(r["startup_s"]) for r in group]
        if max(startups) < 0.01:
            startup = "< 0.01 s"
        else:
            startup = " / ".join(exact(s) for s in startups) + " s (Ray and its actors)"
        median = " / ".join(exact(float(r["median_later_round_s"])) for r in group) + " s"
        ups = [int(r["bytes_up"]) for r in group]
        if first is not None and ups == [int(r["bytes_up"]) for r in first]:
            sent = "the same"
        elif all(int(r["bytes_down"]) == 2 * int(r["bytes_up"]) for r in group):
            sent = " / ".join(exact(u / 1e6) for u in ups) + " MB, twice that down"
        else:
            sent = " / ".join(f"{exact(u / 1e6)} / {exact(int(r['bytes_down']) / 1e6)}" for u, r in zip(ups, group, strict=True)) + " MB"  # fmt: skip
        silos = " / ".join(r["silos"] for r in group)
        out.append([runtime, silos, startup, median, sent])
        first = first or group
    header = "runtime|silos|start-up before round 1|median round|bytes up / down per run"
    return Table(header.split("|"), out)


@view("compare_grouping")
def compare_grouping_view(source: Source) -> Table:
    """``benchmarks/compare_grouping.py``'s result: per estimator or given grouping, the number
    of trunks (groups), the ARI on each seed (once when equal on every seed) and the paired gain
    over one shared trunk, mean +- sample standard deviation over seeds."""
    rows = [r for r in read_csv(source.paths[0]) if r["strategy"] == "grouping"]
    names = {
        "transfer_gain": "`transfer_gain` (default)",
        "tag": "`tag`",
        "update_similarity": "`update_similarity`",
        "planted": "planted (given)",
        "crossed": "crossed (given)",
        "singletons": "singletons (given)",
    }
    out = []
    for affinity, label in names.items():
        group = sorted((r for r in rows if r["affinity"] == affinity), key=lambda r: int(r["seed"]))
        if not group:
            continue
        trunks = sorted({len(r["groups"].split("|")) for r in group})
        aris = [float(r["ari"]) for r in group]
        ari = exact(aris[0]) if affinity in ("planted", "crossed", "singletons") and len(set(aris)) == 1 else ", ".join(exact(a) for a in aris)  # fmt: skip
        gains = [float(r["gain_vs_all_in_one_pct"]) for r in group]
        gain = f"+{exact(statistics.mean(gains))} +- {exact(statistics.stdev(gains))}%"
        out.append([label, " or ".join(str(t) for t in trunks), ari, gain])
    header = "groups|trunks|ARI vs planted, seeds 0 to 4|paired gain over one shared trunk"
    return Table(header.split("|"), out)


@view("balancing_time")
def balancing_time_view(source: Source) -> Table:
    """``benchmarks/balancing_time.py``'s result: per method, the time of one call at each
    (T, d), in ms under a second; the row 'Gramian alone' is the Gramian's time of the cell."""
    rows = read_csv(source.paths[0])

    def duration(seconds: float) -> str:
        return f"{exact(seconds * 1e3)} ms" if seconds < 1 else f"{exact(seconds)} s"

    cells = sorted({(int(r["tasks"]), int(float(r["dim"]))) for r in rows})
    cells.sort(key=lambda c: (c[1], c[0]))
    header = ["method"] + [f"T={t}, d=1e{round(math.log10(d))}" for t, d in cells]
    out = []
    for method in sorted({r["method"] for r in rows}):
        by = {(int(r["tasks"]), int(float(r["dim"]))): r for r in rows if r["method"] == method}
        out.append([f"`{method}`"] + [duration(float(by[c]["call_s"])) if c in by else "-" for c in cells])  # fmt: skip
    gramian = []
    for cell in cells:
        times = [float(r["gramian_s"]) for r in rows if (int(r["tasks"]), int(float(r["dim"]))) == cell]  # fmt: skip
        gramian.append(duration(max(times)))
    out.append(["Gramian alone", *gramian])
    return Table(header, out)


@view("reference_scores")
def reference_scores_view(source: Source) -> Table:
    """``benchmarks/reference_scores.py``'s result for data set ARG: per task, its score and the
    test set's chance level."""
    dataset = source.args[0]
    rows = [r for r in read_csv(source.paths[0]) if r["dataset"] == dataset]
    out = [[f"`{r['task']}`", exact(float(r["score"])), exact(float(r["chance"]))] for r in rows]
    return Table(["task", r"accuracy", "chance"], out)


@view(
    "dataset_tasks",
    unchecked={
        "kind": "the task's definition",
        "labelled rows": "a count of the data set's rows",
        "chance": "the data set's majority share (or R^2 0): a property of the data",
    },
)
def dataset_tasks_view(source: Source) -> Table:
    """A real-data card's task table (docs/datasets.md): the reference score of each task
    (reference_scores.csv, data set ARG 1) and FedAvg's mean over seeds on the preset (ARG 2) on
    the silos' own test splits (a report's tasks.csv): accuracy, or R^2 for regression."""
    dataset, preset = source.args
    scores = {r["task"]: r for r in read_csv(source.paths[0]) if r["dataset"] == dataset}
    tasks = [
        r
        for r in read_csv(source.paths[1])
        if r["scenario"] == preset and r["strategy"] == "fedavg"
    ]
    out = []
    for task, score in scores.items():
        label = "R^2 " if score["metric"] == "r2" else ""
        reference = f"{label}{exact(float(score['score']))}"
        if score["kind"] == "binary":
            reference += f" (test chance {exact(float(score['chance']))})"
        rows = [r for r in tasks if r["task"] == task]
        if rows:
            row = rows[0]
            metric = "R^2" if row["primary_metric"] == "r2" else row["primary_metric"]
            federated = f"{metric} {exact(float(row['primary_mean']))}"
            if row["primary_std"]:
                federated += f" +- {exact(float(row['primary_std']))}"
        else:
            federated = "(left out)"
        out.append([f"`{task}`", federated, reference])
    seeds = {r["n_seeds"] for r in tasks}
    column = f"`{preset}`: FedAvg, personal test, mean +- std of {'/'.join(sorted(seeds))} seeds"
    return Table(["task", column, "reference"], out)


@view("real_presets")
def real_presets_view(source: Source) -> Table:
    """The real_presets suite's tasks.csv as per task (rows) and strategy (columns): the Delta
    metric's mean +- std over seeds on the silos' own test splits."""
    rows = read_csv(source.paths[0])
    names = {"local": "local", "fedavg": "FedAvg", "upgrad": "UPGrad"}
    out = []
    for scenario, task in dict.fromkeys((r["scenario"], r["task"]) for r in rows):
        by = {r["strategy"]: r for r in rows if (r["scenario"], r["task"]) == (scenario, task)}
        metric = "MAE" if by["fedavg"]["metric"] == "mae" else by["fedavg"]["metric"]
        cells = [f"{exact(float(by[s]['mean']))} +- {exact(float(by[s]['std']))}" for s in names]
        out.append([scenario, f"{task} ({metric})", *cells])
    return Table(["scenario", "task (metric)", *names.values()], out)


@view("faults")
def faults_view(source: Source) -> Table:
    """``benchmarks/faults.py``'s result for setting ARG: per defence (rows) and fault (columns),
    the run's mean margin over chance (completed) or its status, one per share of faulty silos
    (``10% / 30% / 49%``); ``clean`` is the run without faults."""
    setting = source.args[0]
    rows = [r for r in read_csv(source.paths[0]) if r["setting"] == setting]
    labels = {
        "none": "weighted mean",
        "clip": "`norm_bound=2`",
        "median": "`robust=median`",
        "trimmed": "`robust=trimmed_mean`, `trim_count=F`",
    }
    faults = list(dict.fromkeys(r["fault"] for r in rows if r["fault"] != "none"))

    def cell(row: dict[str, str]) -> str:
        if row["status"] == "completed":
            value = float(row["mean_over_chance"])
            return f"{'+' if value >= 0 else ''}{exact(value)}"
        return row["status"]

    out = []
    for defence, label in labels.items():
        mine = [r for r in rows if r["defence"] == defence]
        if not mine:
            continue
        clean = [cell(r) for r in mine if r["fault"] == "none"]
        cells = [
            " / ".join(cell(r) for r in sorted(mine, key=lambda r: float(r["fraction"])) if r["fault"] == fault)
            for fault in faults
        ]  # fmt: skip
        out.append([label, *(clean or [""]), *cells])
    return Table(["defence", "clean", *(f"`{f}`" for f in faults)], out)


def expected_table(source: Source, doc: Table) -> Table:
    if source.view is not None:
        return VIEWS[source.view](source)
    if source.paths[0].suffix == ".md":
        return markdown_table(source, doc.header)
    if source.paths[0].suffix == ".csv":
        return csv_table(source)
    raise ValueError(f"no view for {source.paths[0].name}: name one (view: NAME)")


def compare_tables(doc: Table, source: Source) -> list[str]:
    """The cells of ``doc`` that differ from its source (module docstring)."""
    expected = expected_table(source, doc)
    unchecked = UNCHECKED.get(source.view or "", {})
    key = source.key or [doc.header[0]]
    problems = []
    for name in [*key, *doc.header]:
        if name not in doc.header:
            return [f"key column '{name}' is not a column of the table"]
        if name not in expected.header and name not in unchecked:
            return [f"column '{name}' is not in the source (it has {expected.header})"]
    index = {
        tuple(skeleton_key(row[expected.column(k)]) for k in key): row for row in expected.rows
    }
    for row in doc.rows:
        label = " / ".join(row[doc.column(k)] for k in key)
        match = index.get(tuple(skeleton_key(row[doc.column(k)]) for k in key))
        if match is None:
            problems.append(f"row '{label}' is not in the source")
            continue
        for name in doc.header:
            if name in key or name in unchecked:
                continue
            why = same_cell(row[doc.column(name)], match[expected.column(name)])
            if why:
                problems.append(f"row '{label}', column '{name}': {why}")
    return problems


def skeleton_key(cell: str) -> str:
    return " ".join(EMPHASIS.sub("", cell).split())


# ------------------------------------------------------------------------------ paragraphs
NOT_FIGURES = (
    re.compile(r"95% (?:CI|confidence)"),
    re.compile(r"up to 70,000 candidates"),  # a limit of the code (strategies/grouping)
)
"""Phrases whose numbers are not results."""


def figures(text: str) -> list[tuple[str, Number]]:
    """The figures of a paragraph to look up (module docstring), with the words around each."""
    text = COMMENT.sub(" ", text)
    text = LINK_TARGET.sub("]", CODE.sub(" ", text))
    text = VERSION.sub(" ", text)
    for pattern in NOT_FIGURES:
        text = pattern.sub(" ", text)
    found = []
    for match, number in zip(NUMBER.finditer(text), numbers(text), strict=True):
        if number.integer and not number.percent and not number.signed and abs(number.value) < 100:
            continue
        around = " ".join(text[max(0, match.start() - 25) : match.end() + 10].split())
        found.append((around, number))
    return found


def compare_text(text: str, source: Source) -> list[str]:
    values: list[float] = []
    for path, name, where in zip(source.paths, source.sections, source.filters, strict=True):
        values.extend(file_numbers(path, name, where))
    problems = []
    for around, number in figures(text):
        candidates = [*values, *(v * 100 for v in values)] if number.percent else values
        if not number.signed:  # "beat it by 1.27" restates a difference of -1.27
            candidates = [*candidates, *(-v for v in candidates)]
        if not any(number.matches(v) for v in candidates):
            problems.append(f"'{around}': not in the source")
    return problems


# ---------------------------------------------------------------- tables without a source
METRIC_HEADER = re.compile(
    r"\b(accuracy|MAE|R\^2|Delta_MTL|p vs|gain|wall|round|start-up|memory|MB|ms|seconds|ARI|"
    r"personal|reference)\b",
    re.I,
)
RESULT_CELL = re.compile(r"±|\+-|\d%|\d ?(?:s|ms|MB|KB|GB|x)\b")
NOT_RESULTS: dict[tuple[str, str], str] = {
    ("README.md", "file"): "the files a run writes",
    ("docs/benchmark.md", "path"): "a bench directory's layout",
    ("docs/benchmark.md", "file"): "the report's files",
    ("docs/balancing.md", "local optimizer"): "a formula per optimizer",
    ("docs/balancing.md", ""): "the cost of each balancing place, in symbols",
    ("docs/balancing.md", "name"): "each method's rule and parameters",
    ("docs/datasets.md", ""): "a data set's card: source, licence, size, silos, preprocessing",
    ("docs/datasets.md", "path"): "CelebA's files (image sizes in pixels)",
    ("README.md", "key"): "config keys and what they do",
    ("docs/robustness.md", "`strategy.robust`"): "the averaging rules and their weights",
    ("docs/robustness.md", "rule"): "breakdown points, as formulas",
    ("docs/robustness.md", "`fault=`"): "the faults, their parameters and papers",
    ("docs/systems.md", "preset"): "the system presets and the values they set",
}
"""(doc, first header cell) -> why a table that looks like results is not one."""


def looks_like_results(table: Table) -> bool:
    if any(METRIC_HEADER.search(cell) for cell in table.header):
        return True
    return any(RESULT_CELL.search(cell) for row in table.rows for cell in row)


# ----------------------------------------------------------------------------------- check
def doc_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for pattern in DOCS:
        found.extend(sorted(root.glob(pattern)))
    return found


def check_file(path: Path, root: Path = ROOT) -> list[str]:
    """The problems of one Markdown file: ``FILE:LINE: what``."""
    name = path.relative_to(root).as_posix()
    problems = []
    for block in blocks(path.read_text(encoding="utf-8")):
        where = f"{name}:{block.line}"
        if block.source is None:
            table = block.table
            if (
                table is not None
                and looks_like_results(table)
                and (name, table.header[0]) not in NOT_RESULTS
            ):
                problems.append(
                    f"{where}: a results table with no source comment "
                    f"(<!-- source: FILE -->), or list it in NOT_RESULTS"
                )
            continue
        if block.kind in ("heading", "code"):
            problems.append(f"{where}: a source comment must precede a table or a paragraph")
            continue
        try:
            source = parse_source(block.source, root)
            if block.table is not None:
                found = compare_tables(block.table, source)
            else:
                found = compare_text(block.text, source)
        except (ValueError, KeyError, IndexError) as error:
            found = [f"source '{block.source}': {type(error).__name__}: {error}"]
        problems += [f"{where}: {p}" for p in found]
    return problems


def check(root: Path = ROOT, files: Iterable[Path] | None = None) -> list[str]:
    """Every problem of the docs under ``root`` (README.md and docs/*.md by default)."""
    problems = []
    for path in files if files is not None else doc_files(root):
        problems += check_file(path, root)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    problems = check()
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} figure(s) of the docs do not match their sources", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
