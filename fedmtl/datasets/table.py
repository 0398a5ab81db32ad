"""Tables as multi-task datasets: ``dataset=table`` (a user's own CSV or Parquet file) and the base
of the tabular plug-ins (``star``, ``tv16``, ``randhie``).

A table becomes a :class:`TableSource`: its raw feature and target columns, natural-id columns and
leakage rule. Its :class:`~fedmtl.datasets.schema.FeatureSchema` is fitted on the training rows
once the experiment has decided them (:meth:`TableSource.to_dataset`), or read from a schema file
that every silo of a deployment shares. An empty cell in a target column means "not labelled"
(the task mask); one target column is one task.

``dataset=table`` keys: ``path`` (a ``.csv`` or ``.parquet`` file), ``targets`` (column ->
``binary`` | ``multiclass`` | ``regression``), ``features`` (columns; null: every column that is no
target, id or group column), ``categorical`` (columns encoded as categories even when numeric),
``id_columns`` (natural ids offered to ``partition=natural_id partition.split.column=<col>``),
``group_column`` (rows sharing it stay on one side of train/test), ``schema`` (a schema file to use
instead of fitting one, or the schema itself as a mapping).

Without ``path`` but with a schema, the table has no rows: it describes the rows that the silos of a
deployment hold themselves (``partition=local``); ``targets`` then default to the schema's.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmtl.core.data import Footprint, MultiTaskDataset, check_leakage_rule
from fedmtl.core.errors import ConfigError
from fedmtl.core.tasks import TaskKind
from fedmtl.datasets.schema import FeatureSchema, NumericFeature, is_numeric

KINDS: tuple[TaskKind, ...] = ("binary", "multiclass", "regression")
SUFFIXES = {".csv": "CSV", ".parquet": "Parquet", ".pq": "Parquet"}


@dataclass(frozen=True, eq=False)
class TableSource:
    """A table before its encoding is fitted.

    ``columns``: raw feature and target columns (numeric ones as float64 with NaN for empty
    cells, others as object arrays with None); ``features``: the feature columns in order;
    ``targets``: target column -> task kind; ``natural_ids``: id columns (the group column too);
    ``group_column`` and ``heldout``: the leakage rule (see
    :class:`~fedmtl.core.data.MultiTaskDataset`); ``categorical``: features encoded as categories
    even when numeric; ``schema``: a given schema (no fitting); ``info``: summary metadata.
    """

    name: str
    columns: dict[str, np.ndarray]
    features: list[str]
    targets: dict[str, TaskKind]
    natural_ids: dict[str, np.ndarray] = field(default_factory=dict)
    group_column: str | None = None
    heldout: np.ndarray | None = None
    categorical: tuple[str, ...] = ()
    schema: FeatureSchema | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_leakage_rule(
            self.name, self.num_samples, self.natural_ids, self.group_column, self.heldout
        )

    @property
    def num_samples(self) -> int:
        return len(next(iter(self.columns.values())))

    def fit(self, rows: np.ndarray) -> FeatureSchema:
        """The given schema, else one fitted on ``rows`` (the training rows) only."""
        if self.schema is not None:
            return self.schema
        return FeatureSchema.fit(self.columns, self.features, self.targets, rows, self.categorical)

    def to_dataset(self, rows: np.ndarray) -> MultiTaskDataset:
        """The encoded dataset, its schema fitted on ``rows`` (or the given one)."""
        schema = self.fit(rows)
        targets, labelled = {}, []
        for target in schema.targets:
            values, mask = target.encode(self.columns[target.name])
            targets[target.name] = values
            labelled.append(mask)
        return MultiTaskDataset(
            name=self.name,
            inputs=schema.encode(self.columns, self.num_samples),
            tasks=tuple(t.spec() for t in schema.targets),
            targets=targets,
            mask=torch.stack(labelled, dim=1),
            info={
                **self.info,
                "schema": schema.to_json(),
                "schema_fitted_on_rows": schema.fitted_rows,
            },
            natural_ids=self.natural_ids,
            group_column=self.group_column,
            heldout=self.heldout,
        )


@dataclass(frozen=True)
class TableParams:
    """``dataset=table``: a user's own table (see the module docstring)."""

    path: str | None = None
    targets: dict[str, str] | None = None
    features: list[str] | None = None
    categorical: list[str] = field(default_factory=list)
    id_columns: list[str] = field(default_factory=list)
    group_column: str | None = None
    schema: str | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.path:
            if self.schema is None:
                raise ConfigError(
                    "path", "is required.", "set dataset.path=FILE (.csv or .parquet)."
                )
            return  # the rows are the silos' own (partition=local); the schema describes them
        if Path(self.path).suffix.lower() not in SUFFIXES:
            raise ConfigError(
                "path", f"{self.path} is neither .csv nor .parquet.", "give a CSV or Parquet file."
            )
        if not self.targets:
            raise ConfigError(
                "targets",
                "names no target column.",
                "set e.g. +dataset.targets.price=regression +dataset.targets.sold=binary.",
            )
        for column, kind in self.targets.items():
            if kind not in KINDS:
                raise ConfigError(
                    f"targets.{column}", f"is {kind!r}.", f"choose one of {list(KINDS)}."
                )

    def footprint(self) -> Footprint | None:
        """The table's size from its file (:func:`table_shape`) before it is read: R rows of C
        columns take at least C x :data:`TABLE_COLUMN_BYTES` + R x C x :data:`TABLE_CELL_BYTES`
        while building, and its inputs at least one float32 per feature column (a category
        adds more once encoded). None without a file or for one that cannot be read."""
        shape = table_shape(self.path) if self.path else None
        if shape is None:
            return None
        rows, columns = shape
        targets = len(self.targets or {})
        features = len(self.features) if self.features is not None else columns - targets
        building = columns * TABLE_COLUMN_BYTES + rows * columns * TABLE_CELL_BYTES
        return Footprint(rows, max(features, 0), targets, building, key="dataset.path")


TABLE_COLUMN_BYTES = 4096
"""Memory a table takes per column whatever its rows (pandas' parse and fedmtl's encoding; about
4 KiB measured on a table of 100,000 columns and 40 rows)."""
TABLE_CELL_BYTES = 16
"""Memory a table takes per cell at least: pandas' float64 and the float64 column fedmtl encodes
from (text cells take more)."""
_CHUNK = 1 << 24


def table_shape(path: str) -> tuple[int, int] | None:
    """A table's rows and columns without reading it into memory: a Parquet file's metadata, or
    a CSV's header (its fields) and line count (a quoted cell holding a line break counts as a
    row); None when the file cannot be read (the reader says why, later)."""
    file = Path(path)
    try:
        if SUFFIXES.get(file.suffix.lower()) == "Parquet":
            import pyarrow.parquet as pq  # noqa: PLC0415 - heavy, only for Parquet tables

            metadata = pq.read_metadata(file)
            return int(metadata.num_rows), int(metadata.num_columns)
        lines, header, last = 0, bytearray(), b"\n"
        with file.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                if not lines:
                    header += chunk.split(b"\n", 1)[0]
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except Exception:  # pyarrow raises many types for a file that is not Parquet
        return None
    rows = lines - 1 + (last != b"\n")  # the header is no row; the last line may lack its \n
    text = header.decode("utf-8", errors="replace").rstrip("\r")
    try:
        columns = len(next(csv.reader([text]), []))
    except csv.Error:  # e.g. a carriage return inside: count the separators
        columns = text.count(",") + 1
    return max(rows, 0), columns


def read_table(path: str, key: str = "dataset.path") -> Any:
    """A CSV or Parquet file as a pandas DataFrame; an unreadable file is a ConfigError."""
    # pandas takes a while to import; only table datasets need it.
    import pandas as pd  # noqa: PLC0415 - heavy, only for table datasets

    file = Path(path)
    kind = SUFFIXES.get(file.suffix.lower(), "table")
    if not file.is_file():
        raise ConfigError(key, f"no {kind} file at {file}.", "give the path of an existing file.")
    try:
        frame = pd.read_csv(file) if kind == "CSV" else pd.read_parquet(file)
    except Exception as err:  # pandas and pyarrow raise many types for a malformed file
        raise ConfigError(
            key,
            f"cannot read {file} as {kind}: {type(err).__name__}: {err}",
            f"give a valid {kind} file.",
        ) from None
    if frame.empty:
        raise ConfigError(key, f"{file} holds no rows.", "give a table with data rows.")
    return frame


def table_source(
    frame: Any,
    name: str,
    targets: Mapping[str, TaskKind],
    features: Sequence[str] | None = None,
    categorical: Sequence[str] = (),
    id_columns: Sequence[str] = (),
    group_column: str | None = None,
    schema: FeatureSchema | None = None,
    info: Mapping[str, Any] | None = None,
    key: str = "dataset",
) -> TableSource:
    """A :class:`TableSource` of a pandas DataFrame; every named column is checked (ConfigErrors
    name ``key.<field>`` and list the columns the table has)."""
    available = [str(c) for c in frame.columns]
    frame = frame.set_axis(available, axis=1)
    known = set(available)  # a set: a table may have very many columns

    def require(column: str, field_name: str) -> None:
        if column not in known:
            raise ConfigError(
                f"{key}.{field_name}",
                f"the table has no column '{column}'.",
                f"choose among its columns {_listed(available)}.",
            )

    for column in targets:
        require(column, f"targets.{column}")
        if "." in column or "/" in column:
            raise ConfigError(
                f"{key}.targets.{column}",
                "a target column names a task, which may not contain '.' or '/'.",
                "rename the column.",
            )
    for column in id_columns:
        require(column, "id_columns")
    if group_column is not None:
        require(group_column, "group_column")
    reserved = {*targets, *id_columns, *([group_column] if group_column else [])}
    if schema is not None:
        if features is not None and list(features) != schema.feature_names:
            raise ConfigError(
                f"{key}.features",
                f"{list(features)} differ from the schema's features {schema.feature_names}.",
                "set dataset.features to null to use the schema's.",
            )
        features = schema.feature_names
        if {t.name: t.kind for t in schema.targets} != dict(targets):
            raise ConfigError(
                f"{key}.schema",
                f"its targets {[t.to_json() for t in schema.targets]} differ from dataset.targets.",
                "use the schema written for these targets.",
            )
    if features is None:
        features = [c for c in available if c not in reserved]
    for column in features:
        require(column, "features")
        if column in reserved:
            raise ConfigError(
                f"{key}.features",
                f"'{column}' is a target, id or group column.",
                "leave it out of dataset.features.",
            )
    for column in categorical:
        require(column, "categorical")
    ids = {}
    for column in dict.fromkeys([*id_columns, *([group_column] if group_column else [])]):
        values = frame[column].to_numpy()
        if frame[column].isna().any():
            raise ConfigError(
                f"{key}.{'group_column' if column == group_column else 'id_columns'}",
                f"column '{column}' has empty cells: every row needs its id.",
                "fill them, or drop those rows.",
            )
        ids[column] = values
    columns = {c: _raw(frame[c]) for c in dict.fromkeys([*features, *targets])}
    return TableSource(
        name=name,
        columns=columns,
        features=list(features),
        targets=dict(targets),
        natural_ids=ids,
        group_column=group_column,
        categorical=tuple(categorical),
        schema=schema,
        info=dict(info or {}),
    )


def _listed(names: Sequence[str], most: int = 20) -> str:
    """``names`` for a message: all of them, or the first ``most`` and how many there are."""
    if len(names) <= most:
        return str(list(names))
    return f"{list(names[:most])[:-1]} ... ({len(names)} columns)".replace("] ...", ", ...")


def _raw(series: Any) -> np.ndarray:
    """A column as float64 with NaN (numbers, booleans) or an object array with None (text)."""
    values = series.to_numpy()
    if is_numeric(values):
        return values.astype(np.float64)
    if series.dtype.kind == "b" or str(series.dtype) == "boolean":
        return series.astype("float64").to_numpy()
    try:  # numbers stored as text or with missing values (pandas' nullable dtypes)
        return series.astype("float64").to_numpy()
    except (TypeError, ValueError):
        return np.array([None if _missing(v) else str(v) for v in values], dtype=object)


def _missing(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and np.isnan(value))
        or str(value) in ("<NA>", "nan", "NaT")
    )


def table_schema(params: TableParams) -> FeatureSchema | None:
    """The schema ``dataset.schema`` gives: read from its file, or the mapping itself."""
    if params.schema is None:
        return None
    if isinstance(params.schema, str):
        return FeatureSchema.load(params.schema)
    return FeatureSchema.from_json(params.schema, "dataset.schema: the schema")


def schema_targets(schema: FeatureSchema) -> dict[str, TaskKind]:
    """Target column -> task kind, as ``schema`` encodes them."""
    return {t.name: t.kind for t in schema.targets}


def empty_frame(schema: FeatureSchema) -> Any:
    """A table with the columns of ``schema`` and no rows."""
    import pandas as pd  # noqa: PLC0415 - heavy, only for table datasets

    columns: dict[str, Any] = {}
    for feature in schema.features:
        columns[feature.name] = pd.Series(
            [], dtype="float64" if isinstance(feature, NumericFeature) else "object"
        )
    for target in schema.targets:
        columns[target.name] = pd.Series(
            [], dtype="float64" if target.kind == "regression" else "object"
        )
    return pd.DataFrame(columns)


def build_table(params: TableParams, seed: int) -> TableSource:
    """``dataset=table``: the user's file, checked; ``seed`` unused (the table is fixed). Without
    a file, the schema's columns with no rows (the silos hold them)."""
    del seed
    schema = table_schema(params)
    if params.path is None:
        assert schema is not None  # checked by TableParams
        return table_source(
            empty_frame(schema),
            name="table",
            targets=dict(params.targets or schema_targets(schema)),  # type: ignore[arg-type]
            features=params.features,
            schema=schema,
            info={"source": "silos (partition=local)", "num_rows": 0},
        )
    frame = read_table(params.path)
    return table_source(
        frame,
        name="table",
        targets=dict(params.targets or {}),  # type: ignore[arg-type]
        features=params.features,
        categorical=params.categorical,
        id_columns=params.id_columns,
        group_column=params.group_column,
        schema=schema,
        info={"source": str(Path(params.path).resolve()), "num_rows": len(frame)},
    )
