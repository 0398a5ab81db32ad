"""``dataset=celeba``: CelebA read from its official layout (tested on a small generated fixture in
that layout: the real CelebA is not on the test machines). Parsing of the three list files,
every malformed input as a ConfigError naming the file and line, the crop and resize, attribute
selection, identities as natural silos, the official partition as held-out rows, and a run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fedmtl.app.launch import run
from fedmtl.app.run.config import parse
from fedmtl.app.run.experiment import build_data
from fedmtl.core.data import MultiTaskDataset
from fedmtl.core.errors import ConfigError
from fedmtl.datasets import DATASETS, build_source
from fedmtl.datasets.celeba import (
    TAG9,
    check_memory,
    crop_resize,
    input_bytes,
    official_heldout,
    read_lists,
)
from tests.support.celeba import CELEBA_ATTRIBUTES, CelebAFixture, celeba_cell, write_celeba
from tests.support.datasets import celeba_example
from tests.support.runs import beats_chance, compose_raw

ATTR, IDENTITY, PARTITION = "list_attr_celeba.txt", "identity_CelebA.txt", "list_eval_partition.txt"


def build(root: Path, seed: int = 0, **values: Any) -> MultiTaskDataset:
    params = DATASETS.parse("celeba", {"root": str(root), **values}, "dataset")
    dataset = build_source("celeba", params, seed)
    assert isinstance(dataset, MultiTaskDataset)
    return dataset


def kept_rows(fixture: CelebAFixture, min_images: int = 5) -> np.ndarray:
    """The fixture's rows whose identity has at least ``min_images`` images, in file order."""
    ids, counts = np.unique(fixture.identities, return_counts=True)
    return np.flatnonzero(np.isin(fixture.identities, ids[counts >= min_images]))


def small_fixture(root: Path, **kwargs: Any) -> CelebAFixture:
    """Two identities of 5 images (train and official test): quick to write."""
    return write_celeba(root, **{"sizes": (5, 5), "partitions": (0, 2), **kwargs})


# ------------------------------------------------------------------------------------ parsing
def test_the_fixture_has_the_official_format() -> None:
    fixture = celeba_example()
    lines = (fixture.root / ATTR).read_text().splitlines()
    assert lines[0] == str(len(fixture.names))
    assert lines[1].split() == CELEBA_ATTRIBUTES and len(CELEBA_ATTRIBUTES) == 40
    assert "  1" in lines[2] or "  1" in lines[3]  # a 1 after a -1: two spaces, as in CelebA
    assert (fixture.root / IDENTITY).read_text().splitlines()[0].split()[0] == "000001.jpg"
    with Image.open(fixture.root / "img_align_celeba" / "000001.jpg") as image:
        assert (image.format, image.size) == ("JPEG", (178, 218))


def test_lists_are_parsed_in_file_order() -> None:
    fixture = celeba_example()
    lists = read_lists(fixture.root)
    assert lists.names == fixture.names
    assert lists.attribute_names == CELEBA_ATTRIBUTES
    np.testing.assert_array_equal(lists.values, fixture.values == 1)
    np.testing.assert_array_equal(lists.identities, fixture.identities)
    np.testing.assert_array_equal(lists.partitions, fixture.partitions)
    np.testing.assert_array_equal(lists.lines, np.arange(3, 3 + len(fixture.names)))


def test_any_run_of_whitespace_and_crlf_line_ends_are_read_alike(tmp_path: Path) -> None:
    fixture = celeba_example()
    (tmp_path / "img_align_celeba").symlink_to(fixture.root / "img_align_celeba")
    for name in (ATTR, IDENTITY, PARTITION):
        lines = (fixture.root / name).read_text().splitlines()
        spaced = [" \t".join(line.split()) + "   " for line in lines]
        (tmp_path / name).write_bytes(("\r\n".join(spaced) + "\r\n\r\n").encode())
    again = read_lists(tmp_path)
    original = read_lists(fixture.root)
    assert again.names == original.names and again.attribute_names == original.attribute_names
    np.testing.assert_array_equal(again.values, original.values)
    np.testing.assert_array_equal(again.identities, original.identities)


def edit_line(path: Path, number: int, change: Any) -> None:
    """Replace line ``number`` (1-based) of ``path`` by ``change(line)`` (None drops it)."""
    lines = path.read_text().splitlines()
    new = change(lines[number - 1])
    lines[number - 1 : number] = [] if new is None else [new]
    path.write_text("\n".join(lines) + "\n")


def swap_value(line: str, column: int, value: str) -> str:
    fields = line.split()
    fields[column] = value
    return " ".join(fields)


MALFORMED: list[tuple[str, Any, str]] = [
    ("no root", lambda r: shutil.rmtree(r), "no directory at"),
    ("no image folder", lambda r: shutil.rmtree(r / "img_align_celeba"), "img_align_celeba"),
    ("no attribute file", lambda r: (r / ATTR).unlink(), f"{ATTR}: no such file"),
    ("no identity file", lambda r: (r / IDENTITY).unlink(), f"{IDENTITY}: no such file"),
    ("no partition file", lambda r: (r / PARTITION).unlink(), f"{PARTITION}: no such file"),
    ("count not a number", lambda r: edit_line(r / ATTR, 1, lambda _: "ten"), "line 1 must be"),
    ("count wrong", lambda r: edit_line(r / ATTR, 1, lambda _: "11"), "line 1 says 11 images"),
    ("no header", lambda r: edit_line(r / ATTR, 2, lambda _: ""), "line 2 must list"),
    (
        "header repeats a name",
        lambda r: edit_line(r / ATTR, 2, lambda line: line.replace("Young", "Male")),
        "line 2 lists an attribute name twice",
    ),
    (
        "39 values",
        lambda r: edit_line(r / ATTR, 6, lambda line: line.rsplit(maxsplit=1)[0]),
        "line 6 has 39 values after the file name, the header names 40",
    ),
    (
        "41 values",
        lambda r: edit_line(r / ATTR, 8, lambda line: line + "  1"),
        "line 8 has 41 values",
    ),
    (
        "a 0",
        lambda r: edit_line(r / ATTR, 7, lambda line: swap_value(line, 3, "0")),
        "line 7 has the value '0' for Attractive",
    ),
    (
        "not a number",
        lambda r: edit_line(r / ATTR, 9, lambda line: swap_value(line, 40, "yes")),
        "line 9 has the value 'yes' for Young",
    ),
    (
        "a name twice",
        lambda r: edit_line(r / ATTR, 5, lambda line: line.replace("000003", "000002")),
        "line 5 lists 000002.jpg again (first on line 4)",
    ),
    (
        "identity line of 3 fields",
        lambda r: edit_line(r / IDENTITY, 2, lambda line: line + " 7"),
        "line 2 must be a file name and its identity",
    ),
    (
        "identity not an integer",
        lambda r: edit_line(r / IDENTITY, 3, lambda line: swap_value(line, 1, "x12")),
        "line 3: identity 'x12' is not an integer",
    ),
    (
        "unknown image",
        lambda r: edit_line(r / IDENTITY, 4, lambda line: swap_value(line, 0, "999999.jpg")),
        f"line 4 lists 999999.jpg, which {ATTR} does not",
    ),
    (
        "identity missing",
        lambda r: edit_line(r / IDENTITY, 10, lambda _: None),
        "gives no identity for 000010.jpg",
    ),
    (
        "image listed twice",
        lambda r: edit_line(r / PARTITION, 2, lambda _: "000001.jpg 0"),
        "line 2 lists 000001.jpg a second time",
    ),
    (
        "partition 3",
        lambda r: edit_line(r / PARTITION, 5, lambda line: swap_value(line, 1, "3")),
        "line 5: partition '3' is not one of ['0', '1', '2']",
    ),
    (
        "image missing",
        lambda r: (r / "img_align_celeba" / "000004.jpg").unlink(),
        f"000004.jpg: no such image (listed on line 6 of {ATTR})",
    ),
    (
        "a PNG",
        lambda r: Image.new("RGB", (178, 218)).save(r / "img_align_celeba" / "000002.jpg", "PNG"),
        "000002.jpg: is PNG, not a JPEG (listed on line 4",
    ),
    (
        "garbage",
        lambda r: (r / "img_align_celeba" / "000003.jpg").write_bytes(b"not an image"),
        "000003.jpg: cannot be decoded as a JPEG (listed on line 5",
    ),
    (
        "truncated",
        lambda r: (r / "img_align_celeba" / "000005.jpg").write_bytes(
            (r / "img_align_celeba" / "000005.jpg").read_bytes()[:900]
        ),
        "000005.jpg: cannot be decoded as a JPEG",
    ),
]


@pytest.mark.parametrize(
    ("spoil", "says"), [(m[1], m[2]) for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_input_names_the_file_and_line(tmp_path: Path, spoil: Any, says: str) -> None:
    root = tmp_path / "celeba"
    small_fixture(root)
    spoil(root)
    with pytest.raises(ConfigError) as err:
        build(root, min_images_per_identity=1)
    assert err.value.key == "dataset.root"
    assert says in str(err.value)
    assert str(root) in str(err.value) and "Fix:" in str(err.value)
    assert "img_align_celeba/" in err.value.fix  # the expected layout


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"root": None}, "dataset.root"),
        ({"root": ""}, "dataset.root"),
        ({"attributes": "tag10"}, "dataset.attributes"),
        ({"attributes": []}, "dataset.attributes"),
        ({"attributes": ["Male", "Male"]}, "dataset.attributes"),
        ({"image_size": 4}, "dataset.image_size"),
        ({"image_size": 200}, "dataset.image_size"),
        ({"test_split": "validation"}, "dataset.test_split"),
        ({"min_images_per_identity": 0}, "dataset.min_images_per_identity"),
        ({"max_identities": 0}, "dataset.max_identities"),
        ({"memory_limit_gb": 0}, "dataset.memory_limit_gb"),
    ],
)
def test_invalid_parameters_name_the_key(values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        DATASETS.parse("celeba", {"root": "/somewhere", **values}, "dataset")
    assert err.value.key == key


def test_the_preset_says_to_set_the_root() -> None:
    with pytest.raises(ConfigError) as err:
        parse(compose_raw(["experiment=celeba_identities"]))
    assert err.value.key == "dataset.root"
    assert "list_attr_celeba.txt" in str(err.value)


def test_an_attribute_missing_from_the_header_is_named(tmp_path: Path) -> None:
    small_fixture(tmp_path)
    with pytest.raises(ConfigError) as err:
        build(tmp_path, attributes=["Male", "Sunglasses"])
    assert err.value.key == "dataset.attributes"
    assert "'Sunglasses'" in str(err.value) and "Wearing_Hat" in str(err.value)


# ------------------------------------------------------------------------------ preprocessing
def test_crop_and_resize_keep_the_centred_square() -> None:
    """Green bands above and below the centred square go; its left half stays red, its right half
    blue; a uniform area keeps its exact colour."""
    pixels = np.zeros((218, 178, 3), dtype=np.uint8)
    pixels[:20] = pixels[198:] = (0, 255, 0)
    pixels[20:198, :89] = (255, 0, 0)
    pixels[20:198, 89:] = (0, 0, 255)
    out = crop_resize(Image.fromarray(pixels), 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[..., 1].max() == 0  # no green row survives
    assert (out[:, :31] == (255, 0, 0)).all()
    assert (out[:, 33:] == (0, 0, 255)).all()
    assert crop_resize(Image.fromarray(pixels), 32).shape == (32, 32, 3)


def test_every_attribute_shows_in_its_cell_of_the_input() -> None:
    """Inputs are (N, 3, 64, 64) in [-1, 1]; the cell of attribute k, mapped through the crop
    (rows 20..197) and the resize (178 -> 64), is bright exactly where the target is 1."""
    fixture = celeba_example()
    dataset = build(fixture.root)
    rows = kept_rows(fixture)
    assert dataset.inputs.shape == (len(rows), 3, 64, 64)
    assert dataset.inputs.dtype == torch.float32
    assert float(dataset.inputs.min()) >= -1.0 and float(dataset.inputs.max()) <= 1.0
    scale = 64 / 178
    for k, attribute in enumerate(CELEBA_ATTRIBUTES):
        top, bottom, left, right = celeba_cell(k)
        r0, r1 = round((top - 20) * scale) + 1, round((bottom - 20) * scale) - 1
        c0, c1 = round(left * scale) + 1, round(right * scale) - 1
        brightness = dataset.inputs[:, :, r0:r1, c0:c1].mean(dim=(1, 2, 3))
        expected = torch.from_numpy(fixture.values[rows, k] == 1)
        assert torch.equal(brightness > 0.0, expected), attribute
        assert torch.equal(dataset.targets[attribute], expected.float())
    assert float(dataset.inputs[:, :, 0].mean()) < 0.5  # the white band above was cropped off


# ---------------------------------------------------------------------------- tasks and silos
def test_all_40_attributes_by_default_as_binary_tasks() -> None:
    fixture = celeba_example()
    dataset = build(fixture.root)
    assert dataset.task_names == CELEBA_ATTRIBUTES
    assert all(task.kind == "binary" for task in dataset.tasks)
    assert bool(dataset.mask.all())
    rows = kept_rows(fixture)
    targets = np.stack([dataset.targets[a].numpy() for a in CELEBA_ATTRIBUTES], axis=1)
    np.testing.assert_array_equal(targets, (fixture.values[rows] + 1) / 2)  # -1/1 -> 0/1
    chance = dataset.chance_levels()
    for k, attribute in enumerate(CELEBA_ATTRIBUTES):
        majority = max(
            np.mean(fixture.values[rows, k] == 1), np.mean(fixture.values[rows, k] == -1)
        )
        assert chance[attribute] == pytest.approx(majority)


def test_attributes_by_name_or_as_tag9() -> None:
    root = celeba_example().root
    assert build(root, attributes=["Young", "Male"]).task_names == ["Young", "Male"]
    tag9 = build(root, attributes="tag9")
    assert tag9.task_names == list(TAG9)
    assert TAG9 == (
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


def test_identities_are_natural_ids_and_small_ones_are_dropped() -> None:
    fixture = celeba_example()
    dataset = build(fixture.root)  # min_images_per_identity = 5: the identity of 3 images goes
    rows = kept_rows(fixture)
    assert len(rows) == 96 and len(fixture.names) == 99
    np.testing.assert_array_equal(dataset.natural_ids["identity"], fixture.identities[rows])
    assert dataset.group_column is None and dataset.heldout is None  # LEAF: no leakage rule
    assert dataset.info["num_identities"] == 8
    assert build(fixture.root, min_images_per_identity=1).num_samples == 99


def test_max_identities_draws_whole_identities_with_the_seed() -> None:
    fixture = celeba_example()
    first = build(fixture.root, seed=3, max_identities=3)
    again = build(fixture.root, seed=3, max_identities=3)
    ids = first.natural_ids["identity"]
    assert len(np.unique(ids)) == 3 and first.num_samples == 36  # 12 images each
    np.testing.assert_array_equal(ids, again.natural_ids["identity"])
    assert torch.equal(first.inputs, again.inputs)
    draws = {
        tuple(np.unique(build(fixture.root, seed=s, max_identities=3).natural_ids["identity"]))
        for s in range(4)
    }
    assert len(draws) > 1


def test_a_natural_id_partition_gives_each_identity_to_one_silo() -> None:
    root = celeba_example().root
    config = parse(
        compose_raw(
            ["experiment=celeba_identities", f"dataset.root={root}", "partition.num_silos=4"]
        )
    )
    dataset, partition = build_data(config)
    ids = dataset.natural_ids["identity"]
    owner: dict[int, int] = {}
    for silo in partition.silos:
        rows = np.concatenate([silo.train_indices, silo.test_indices])
        people = set(ids[rows].tolist())
        assert len(people) == 2  # 8 identities over 4 silos
        for person in people:
            assert owner.setdefault(person, silo.id) == silo.id
        assert silo.num_test > 0  # LEAF: each silo cuts its own images
    assert len(owner) == 8 and partition.held_out is None


def test_memory_is_checked_before_any_image_is_decoded(tmp_path: Path) -> None:
    small_fixture(tmp_path)
    (tmp_path / "img_align_celeba" / "000001.jpg").write_bytes(b"broken")
    with pytest.raises(ConfigError) as err:
        build(tmp_path, memory_limit_gb=1e-4)
    assert err.value.key == "dataset.memory_limit_gb"
    assert "10 selected images" in str(err.value) and "max_identities" in str(err.value)
    assert input_bytes(202_599, 64) / 2**30 == pytest.approx(9.27, abs=0.01)
    check_memory(202_599, 64, 10.0)
    with pytest.raises(ConfigError):
        check_memory(202_599, 64, 4.0)


# ---------------------------------------------------------------------- the official partition
def test_official_test_images_are_the_held_out_rows() -> None:
    fixture = celeba_example()
    dataset = build(fixture.root, test_split="official")
    rows = kept_rows(fixture)
    np.testing.assert_array_equal(dataset.heldout, fixture.partitions[rows] == 2)
    assert dataset.group_column == "identity" and dataset.info["num_official_test_images"] == 12


def test_official_test_images_are_only_ever_test_rows(tmp_path: Path) -> None:
    """Two official test identities; with an iid split over 3 silos and a global test set, every
    silo's test rows are test images and the other rows train; the global test set takes whole
    test identities."""
    write_celeba(tmp_path, sizes=(6, 6, 6, 6, 6), partitions=(0, 0, 1, 2, 2))
    config = parse(
        compose_raw(
            [
                "dataset=celeba",
                f"dataset.root={tmp_path}",
                "dataset.test_split=official",
                "dataset.attributes=[Male,Young]",
                "partition=iid_all",
                "partition.num_silos=3",
                "+partition.global_test_fraction=0.2",
            ]
        )
    )
    dataset, partition = build_data(config)
    assert dataset.heldout is not None
    test_images = np.flatnonzero(dataset.heldout)
    silo_test = np.concatenate([silo.test_indices for silo in partition.silos])
    silo_train = np.concatenate([silo.train_indices for silo in partition.silos])
    global_test = partition.global_test_indices
    assert not np.isin(silo_train, test_images).any()
    np.testing.assert_array_equal(np.sort(np.concatenate([silo_test, global_test])), test_images)
    assert len(np.unique(dataset.natural_ids["identity"][global_test])) == 1
    assert len(global_test) == 6
    assert partition.held_out == {"rule": "fixed", "column": "identity"}


def test_the_official_split_needs_test_images_and_disjoint_identities(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no test images") as err:
        official_heldout(np.array([0, 0, 1]), np.array([1, 1, 2]))
    assert err.value.key == "dataset.test_split"
    with pytest.raises(ConfigError, match="only test images"):
        official_heldout(np.array([2, 2]), np.array([1, 2]))
    small_fixture(tmp_path)
    first_train = next(
        number
        for number, line in enumerate((tmp_path / PARTITION).read_text().splitlines(), 1)
        if line.endswith(" 0")
    )
    edit_line(tmp_path / PARTITION, first_train, lambda line: line[:-1] + "2")
    with pytest.raises(ConfigError, match="1 identities") as err:
        build(tmp_path, test_split="official")
    assert err.value.key == "dataset.test_split"
    assert build(tmp_path).num_samples == 10  # the LEAF split does not use the partition


# ------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_the_identities_preset_beats_chance_on_the_fixture(tmp_path: Path) -> None:
    """experiment=celeba_identities on the fixture: 8 identities in 4 silos, TAG's 9 attributes,
    the preset's CNN; 6 rounds of Adam on batches of 8 (the fixture is tiny) beat every
    attribute's majority rate by 0.1."""
    raw = compose_raw(
        [
            "experiment=celeba_identities",
            f"dataset.root={celeba_example().root}",
            "partition.num_silos=4",
            "runtime=inprocess",
            "tracking=quiet",
            "tracking.plots=false",
            "num_rounds=6",
            "train.batch_size=8",
            "train.optimizer=adam",
            "train.lr=0.003",
        ],
        tmp_path / "run",
    )
    summary = run(parse(raw))
    assert summary["tasks"] == list(TAG9)
    assert summary["dataset_info"]["num_identities"] == 8
    assert beats_chance(summary, margin=0.1) == {}
