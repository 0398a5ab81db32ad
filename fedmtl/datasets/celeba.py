r"""CelebA (Liu et al. 2015), read from a directory in its official layout: 40 binary face
attributes per image, with the celebrity's identity as a natural silo.

``dataset.root`` holds (the layout of torchvision's ``celeba/`` folder):

- ``img_align_celeba/``: the aligned and cropped JPEG images ``000001.jpg`` ... (178 x 218 pixels);
- ``list_attr_celeba.txt``: line 1 the number of images, line 2 the 40 attribute names, then one
  line per image: its file name and 40 values in {-1, 1}, separated by one or more spaces;
- ``identity_CelebA.txt``: one line per image: file name and an integer identity;
- ``list_eval_partition.txt``: one line per image: file name and 0 (train), 1 (validation) or 2
  (test).

Every file is checked before any image is decoded (ConfigError on ``dataset.root`` naming the file
and line: a missing file, a wrong count of values, a value outside {-1, 1}, an image listed twice,
one the attribute file does not list, one without identity or partition). Then:

**Images kept.** Identities with at least ``min_images_per_identity`` images (5, as LEAF does); of
those, ``max_identities`` drawn uniformly without replacement by ``default_rng(seed)`` (all when
null). Every image of a kept identity is kept, in file order. Only these images are decoded.

**Preprocessing.** A W x H image is cut to its centred square of side :math:`s = \min(W, H)` (for
178 x 218: columns 0..177, rows 20..197) and resized to ``image_size`` x ``image_size`` with
Pillow's bilinear filter (antialiased when shrinking). Pixel :math:`p \in \{0, \dots, 255\}`
becomes :math:`x = 2p/255 - 1 \in [-1, 1]`: a fixed map, so no statistic is fitted on any rows
and every silo scales its images the same way. Inputs are (N, 3, size, size) float32, channels RGB.

**Tasks.** One binary task per selected attribute, named as in the file's header, with target
:math:`y = (v + 1)/2` for :math:`v \in \{-1, 1\}`; every image is labelled for every task.
``attributes``: null for all 40 in header order, a list of names (in that order), or ``tag9``:
the 9 attributes of TAG's CelebA experiments (Fifty et al. 2021): 5_o_Clock_Shadow, Black_Hair,
Blond_Hair, Brown_Hair, Goatee, Mustache, No_Beard, Rosy_Cheeks, Wearing_Hat.

**Natural id** ``identity`` (for ``partition=natural_id partition.split.column=identity``).

**Test images** (``test_split``):

- ``leaf`` (default): no leakage rule; each silo cuts its own images into train and test
  (``partition.test_fraction``), as LEAF does, so a silo's test images show people it trains on.
- ``official``: the images of partition 2 in ``list_eval_partition.txt`` are the dataset's held-out
  rows (leakage rule ``fixed``, grouped by ``identity``: the official partition keeps identities
  apart, which is checked); partitions 0 and 1 are training rows (fedmtl has no validation split).
  Meaningful with a split that is not by identity (e.g. ``iid``): with ``natural_id`` on
  ``identity``, a silo holds either test identities only or training identities only.

**Memory.** The inputs take :math:`N \cdot 3 \cdot \text{size}^2 \cdot 4` bytes per process that
builds the dataset (the server and every Ray worker): 48 KiB per image at 64 x 64, 9.3 GiB for all
202,599 images. A selection above ``memory_limit_gb`` is refused before decoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from fedmtl.core.checks import int_at_least, positive
from fedmtl.core.data import MultiTaskDataset
from fedmtl.core.errors import ConfigError
from fedmtl.core.tasks import TaskSpec

IMAGE_DIR = "img_align_celeba"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
IDENTITY_FILE = "identity_CelebA.txt"
PARTITION_FILE = "list_eval_partition.txt"
LAYOUT = (
    f"set dataset.root to CelebA's directory, holding {IMAGE_DIR}/ (000001.jpg ...), "
    f"{ATTRIBUTE_FILE}, {IDENTITY_FILE} and {PARTITION_FILE} side by side, as released "
    "(torchvision's celeba/ folder has this layout)."
)
ROOT_KEY = "dataset.root"
TAG9 = (
    "5_o_Clock_Shadow",
    "Black_Hair",
    "Blond_Hair",
    "Brown_Hair",
    "Goatee",
    "Mustache",
    "No_Beard",
    "Rosy_Cheeks",
    "Wearing_Hat",
)
"""The 9 attributes of TAG's CelebA experiments (Fifty et al. 2021, "Efficiently Identifying Task
Groupings for Multi-Task Learning"; the ``FLAGS.tasks`` of its released CelebA notebook)."""
NAMED_SUBSETS: dict[str, tuple[str, ...]] = {"tag9": TAG9}
TEST_PARTITION = 2
CHUNK = 512  # images decoded into one uint8 buffer before conversion to float32


@dataclass(frozen=True)
class CelebAParams:
    """``dataset=celeba`` (see the module docstring).

    ``root``: the CelebA directory (required). ``attributes``: null (all), a list of names or a
    named subset (``tag9``). ``image_size``: side of the square inputs. ``test_split``: ``leaf``
    (each silo cuts its own test images) or ``official`` (``list_eval_partition.txt``'s test images
    are held out). ``min_images_per_identity`` / ``max_identities``: which identities are kept.
    ``memory_limit_gb``: the most the float32 inputs may take in one process.
    """

    root: str | None = None
    attributes: list[str] | str | None = None
    image_size: int = 64
    test_split: Literal["leaf", "official"] = "leaf"
    min_images_per_identity: int = 5
    max_identities: int | None = None
    memory_limit_gb: float = 4.0

    def __post_init__(self) -> None:
        if not self.root:
            raise ConfigError("root", "is required.", LAYOUT)
        if isinstance(self.attributes, str) and self.attributes not in NAMED_SUBSETS:
            raise ConfigError(
                "attributes",
                f"'{self.attributes}' is no named subset.",
                f"use null (all 40), a list of attribute names, or one of {sorted(NAMED_SUBSETS)}.",
            )
        if isinstance(self.attributes, list):
            if not self.attributes:
                raise ConfigError("attributes", "is empty.", "list some, or use null for all.")
            if len(set(self.attributes)) != len(self.attributes):
                raise ConfigError(
                    "attributes", f"lists a name twice: {self.attributes}.", "list each once."
                )
        int_at_least(self, "image_size", 8)
        if self.image_size > 178:
            raise ConfigError(
                "image_size",
                f"is {self.image_size}, larger than the 178-pixel crop: it would upsample.",
                "use at most 178 (64 is the usual size).",
            )
        if self.test_split not in ("leaf", "official"):
            raise ConfigError(
                "test_split", f"{self.test_split!r} is not allowed.", "use leaf or official."
            )
        int_at_least(self, "min_images_per_identity", 1)
        if self.max_identities is not None:
            int_at_least(self, "max_identities", 1)
        positive(self, "memory_limit_gb")


@dataclass(frozen=True)
class CelebALists:
    """The three list files, checked: images in the attribute file's order, each with its line
    there, its identity and its partition; ``values`` (N, A) bool is True where a value is 1."""

    names: list[str]
    lines: np.ndarray
    attribute_names: list[str]
    values: np.ndarray
    identities: np.ndarray
    partitions: np.ndarray


def input_bytes(num_images: int, image_size: int) -> int:
    """Bytes of the float32 inputs of ``num_images`` images: N x 3 x size x size x 4."""
    return num_images * 3 * image_size * image_size * 4


def _bad(path: Path, problem: str) -> ConfigError:
    return ConfigError(ROOT_KEY, f"{path}: {problem}", LAYOUT)


def _text_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise _bad(path, "no such file.")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise _bad(path, f"cannot be read as text ({type(err).__name__}: {err}).") from None


def read_attributes(path: Path) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """``list_attr_celeba.txt``: (image names, their 1-based line numbers, attribute names, values
    (N, A) bool, True for 1 and False for -1). Fields are separated by any run of whitespace."""
    lines = _text_lines(path)
    if len(lines) < 2:
        raise _bad(path, "needs a count on line 1 and the attribute names on line 2.")
    count_fields = lines[0].split()
    if len(count_fields) != 1 or not count_fields[0].isdigit():
        raise _bad(path, f"line 1 must be the number of images, got {lines[0].strip()!r}.")
    attribute_names = lines[1].split()
    if not attribute_names:
        raise _bad(path, "line 2 must list the attribute names.")
    if len(set(attribute_names)) != len(attribute_names):
        raise _bad(path, "line 2 lists an attribute name twice.")
    width = len(attribute_names)
    names: list[str] = []
    numbers: list[int] = []
    rests: list[str] = []  # the values part of each line, unsplit (8 million fields in all)
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split(None, 1)
        if fields:
            names.append(fields[0])
            numbers.append(number)
            rests.append(fields[1] if len(fields) > 1 else "")
    values = _parse_values(rests, width)
    if values is None:  # something is wrong: find the first bad line, field by field
        _raise_first_bad_line(path, rests, numbers, attribute_names)
        raise _bad(path, "cannot be parsed.")  # unreachable: the scan above raises
    if int(count_fields[0]) != len(names):
        raise _bad(path, f"line 1 says {count_fields[0]} images but the file lists {len(names)}.")
    if not names:
        raise _bad(path, "lists no image.")
    _check_unique(path, names, numbers)
    return names, np.asarray(numbers, dtype=np.int64), attribute_names, values == 1


def _parse_values(rests: list[str], width: int) -> np.ndarray | None:
    """The values of every line as an (N, width) int64 array, or None when a line does not hold
    exactly ``width`` values in {-1, 1}. Parsed in one pass by numpy; a value equal to 1 or -1
    has exactly one "1" character, so once all values are +-1, counting "1"s counts a line's
    values."""
    if not rests:
        return np.zeros((0, width), dtype=np.int64)
    try:
        values = np.fromstring(" ".join(rests), dtype=np.int64, sep=" ")
    except ValueError:  # a field that is not an integer
        return None
    if values.size != len(rests) * width or not np.all((values == 1) | (values == -1)):
        return None
    if any(rest.count("1") != width for rest in rests):
        return None
    return values.reshape(len(rests), width)


def _raise_first_bad_line(
    path: Path, rests: list[str], numbers: list[int], attribute_names: list[str]
) -> None:
    """Raise the ConfigError of the first line with a wrong count of values or a value not in
    {-1, 1}."""
    width = len(attribute_names)
    for number, rest in zip(numbers, rests, strict=True):
        fields = rest.split()
        if len(fields) != width:
            raise _bad(
                path,
                f"line {number} has {len(fields)} values after the file name, "
                f"the header names {width} attributes.",
            )
        for column, value in enumerate(fields):
            if value not in ("1", "-1"):
                raise _bad(
                    path,
                    f"line {number} has the value {value!r} for {attribute_names[column]}: "
                    "values are -1 or 1.",
                )


def _check_unique(path: Path, names: list[str], numbers: list[int]) -> None:
    if len(set(names)) == len(names):
        return
    seen: dict[str, int] = {}
    for name, number in zip(names, numbers, strict=True):
        if name in seen:
            raise _bad(path, f"line {number} lists {name} again (first on line {seen[name]}).")
        seen[name] = number


def read_column(
    path: Path, position: dict[str, int], allowed: Sequence[str] | None, what: str
) -> np.ndarray:
    """A list file of "name value" lines: the values as int64 in the attribute file's order
    (``position``: name -> row). Every listed image must be in the attribute file, once, and
    every image of the attribute file must be listed; values are integers (among ``allowed``)."""
    result = np.zeros(len(position), dtype=np.int64)
    seen = np.zeros(len(position), dtype=bool)
    for number, line in enumerate(_text_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise _bad(path, f"line {number} must be a file name and its {what}, got {line!r}.")
        name, value = fields
        row = position.get(name)
        if row is None:
            raise _bad(path, f"line {number} lists {name}, which {ATTRIBUTE_FILE} does not.")
        if seen[row]:
            raise _bad(path, f"line {number} lists {name} a second time.")
        if allowed is not None and value not in allowed:
            raise _bad(path, f"line {number}: {what} {value!r} is not one of {list(allowed)}.")
        try:
            result[row] = int(value)
        except ValueError:
            raise _bad(path, f"line {number}: {what} {value!r} is not an integer.") from None
        seen[row] = True
    if not seen.all():
        missing = next(name for name, row in position.items() if not seen[row])
        raise _bad(path, f"gives no {what} for {missing}, which {ATTRIBUTE_FILE} lists.")
    return result


def read_lists(root: Path) -> CelebALists:
    """The three list files under ``root``, checked against each other."""
    if not root.is_dir():
        raise ConfigError(ROOT_KEY, f"no directory at {root}.", LAYOUT)
    if not (root / IMAGE_DIR).is_dir():
        raise _bad(root / IMAGE_DIR, "no such directory.")
    names, lines, attribute_names, values = read_attributes(root / ATTRIBUTE_FILE)
    position = {name: row for row, name in enumerate(names)}
    identities = read_column(root / IDENTITY_FILE, position, None, "identity")
    partitions = read_column(root / PARTITION_FILE, position, ("0", "1", "2"), "partition")
    return CelebALists(names, lines, attribute_names, values, identities, partitions)


def select_attributes(requested: list[str] | str | None, available: list[str]) -> list[str]:
    """The attribute names to use, checked against the file's header ``available``."""
    if requested is None:
        return list(available)
    chosen = list(NAMED_SUBSETS[requested]) if isinstance(requested, str) else list(requested)
    for name in chosen:
        if name not in available:
            raise ConfigError(
                "dataset.attributes",
                f"'{name}' is not in the header of {ATTRIBUTE_FILE}.",
                f"choose among {available}.",
            )
    return chosen


def select_identities(
    identities: np.ndarray, min_images: int, max_identities: int | None, seed: int
) -> np.ndarray:
    """The kept identities (sorted): those with at least ``min_images`` images, of which
    ``max_identities`` drawn by ``default_rng(seed)`` (all when None)."""
    ids, counts = np.unique(identities, return_counts=True)
    eligible = ids[counts >= min_images]
    if eligible.size == 0:
        raise ConfigError(
            "dataset.min_images_per_identity",
            f"is {min_images}: no identity has that many images (the most is {counts.max()}).",
            "lower it.",
        )
    if max_identities is None or max_identities >= eligible.size:
        return eligible
    rng = np.random.default_rng(seed % 2**64)
    return np.sort(rng.choice(eligible, size=max_identities, replace=False))


def check_memory(num_images: int, image_size: int, limit_gb: float) -> None:
    """Refuse a selection whose float32 inputs exceed ``limit_gb`` GiB (before decoding)."""
    needed = input_bytes(num_images, image_size)
    if needed > limit_gb * 2**30:
        raise ConfigError(
            "dataset.memory_limit_gb",
            f"is {limit_gb} GiB, but the {num_images} selected images take "
            f"{needed / 2**30:.1f} GiB as float32 {image_size}x{image_size} inputs, in every "
            "process that builds the dataset (the server and each Ray worker).",
            "keep fewer people with dataset.max_identities (about 20 images each), lower "
            "dataset.image_size, or raise dataset.memory_limit_gb if the machine has the memory.",
        )


def official_heldout(partitions: np.ndarray, identities: np.ndarray) -> np.ndarray:
    """The held-out rows of ``test_split=official``: partition 2. Both sides must be non-empty and
    no identity may be on both (the official partition keeps identities apart)."""
    heldout = partitions == TEST_PARTITION
    if not heldout.any() or heldout.all():
        side = "no test" if not heldout.any() else "only test"
        raise ConfigError(
            "dataset.test_split",
            f"is official, but the kept identities have {side} images in {PARTITION_FILE}.",
            "keep more identities (dataset.max_identities), or use test_split=leaf.",
        )
    shared = np.intersect1d(identities[heldout], identities[~heldout])
    if shared.size:
        raise ConfigError(
            "dataset.test_split",
            f"is official, but {PARTITION_FILE} puts {shared.size} identities (e.g. "
            f"{int(shared[0])}) in the test partition and in train or validation; CelebA's own "
            "partition keeps identities apart.",
            "use the released list_eval_partition.txt, or test_split=leaf.",
        )
    return heldout


def load_images(
    directory: Path, names: Sequence[str], lines: np.ndarray, image_size: int
) -> torch.Tensor:
    """Decode ``names`` (JPEG files in ``directory``) into (N, 3, size, size) float32 in [-1, 1]:
    centred square crop, bilinear resize, x = 2p/255 - 1 (module docstring)."""
    from PIL import Image  # noqa: PLC0415 - optional image library, only for celeba

    out = torch.empty((len(names), 3, image_size, image_size), dtype=torch.float32)
    buffer = np.empty((CHUNK, image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, len(names), CHUNK):
        stop = min(start + CHUNK, len(names))
        for i in range(start, stop):
            path = directory / names[i]
            where = f"(listed on line {int(lines[i])} of {ATTRIBUTE_FILE})"
            if not path.is_file():
                raise _bad(path, f"no such image {where}.")
            try:
                with Image.open(path) as image:
                    if image.format != "JPEG":
                        raise _bad(
                            path, f"is {image.format or 'not an image'}, not a JPEG {where}."
                        )
                    buffer[i - start] = crop_resize(image.convert("RGB"), image_size)
            except OSError as err:
                raise _bad(path, f"cannot be decoded as a JPEG {where}: {err}.") from None
        chunk = torch.from_numpy(buffer[: stop - start]).permute(0, 3, 1, 2)
        out[start:stop] = chunk.to(torch.float32).mul_(2.0 / 255.0).sub_(1.0)
    return out


def crop_resize(image: Any, image_size: int) -> np.ndarray:
    """A Pillow RGB image cut to its centred square and resized to (size, size, 3) uint8."""
    from PIL import Image  # noqa: PLC0415 - optional image library, only for celeba

    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))  # resize(box=) would blend in
    resized = square.resize((image_size, image_size), Image.Resampling.BILINEAR)  # rows outside
    return np.asarray(resized, dtype=np.uint8)


def build_celeba(params: CelebAParams, seed: int) -> MultiTaskDataset:
    """CelebA under ``params.root``; ``seed`` draws the identities when ``max_identities`` caps them."""
    assert params.root is not None  # checked by CelebAParams
    root = Path(params.root).expanduser()
    lists = read_lists(root)
    attributes = select_attributes(params.attributes, lists.attribute_names)
    kept = select_identities(
        lists.identities, params.min_images_per_identity, params.max_identities, seed
    )
    rows = np.flatnonzero(np.isin(lists.identities, kept))
    identities = lists.identities[rows]
    heldout = (
        official_heldout(lists.partitions[rows], identities)
        if params.test_split == "official"
        else None
    )
    check_memory(len(rows), params.image_size, params.memory_limit_gb)
    names = [lists.names[r] for r in rows]
    inputs = load_images(root / IMAGE_DIR, names, lists.lines[rows], params.image_size)
    columns = [lists.attribute_names.index(a) for a in attributes]
    values = lists.values[rows][:, columns]
    return MultiTaskDataset(
        name="celeba",
        inputs=inputs,
        tasks=tuple(TaskSpec.binary(a) for a in attributes),
        targets={
            a: torch.from_numpy(values[:, j].astype(np.float32)) for j, a in enumerate(attributes)
        },
        mask=torch.ones((len(rows), len(attributes)), dtype=torch.bool),
        info={
            "source": str(root.resolve()),
            "num_images": len(rows),
            "num_identities": len(kept),
            "images_in_files": len(lists.names),
            "attributes": attributes,
            "image_size": params.image_size,
            "test_split": params.test_split,
            "num_official_test_images": None if heldout is None else int(heldout.sum()),
            "input_megabytes": math.ceil(input_bytes(len(rows), params.image_size) / 2**20),
            "description": "CelebA aligned faces: centred square crop, bilinear resize, "
            "x = 2p/255 - 1; one binary task per attribute (-1/1 -> 0/1)",
        },
        natural_ids={"identity": identities},
        group_column="identity" if heldout is not None else None,
        heldout=heldout,
    )
