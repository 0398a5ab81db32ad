"""A small CelebA in its official layout: :func:`write_celeba` writes one (images whose attributes
are bright or dark cells, :func:`celeba_cell`, and CelebA's list files), :class:`CelebAFixture`
says what it wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# CelebA's 40 attributes, in the order of the header of list_attr_celeba.txt.
CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]
CELEBA_SIZE = (178, 218)  # width, height of an aligned CelebA image


@dataclass(frozen=True)
class CelebAFixture:
    """What :func:`write_celeba` wrote: image names in file order, their identities, official
    partitions (0, 1, 2) and attribute values (N, 40) in {-1, 1}."""

    root: Path
    names: list[str]
    identities: np.ndarray
    partitions: np.ndarray
    values: np.ndarray


def celeba_cell(k: int) -> tuple[int, int, int, int]:
    """Rows and columns (top, bottom, left, right; ends excluded) of the cell that attribute ``k``
    brightens in a fixture image: an 8 x 5 grid over the centred 178 x 178 square (rows 20..197)."""
    row, col = divmod(k, 5)
    top, left = 20 + round(row * 178 / 8), round(col * 178 / 5)
    bottom, right = 20 + round((row + 1) * 178 / 8), round((col + 1) * 178 / 5)
    return top + 3, bottom - 3, left + 3, right - 3  # a margin against JPEG and resize blur


def write_celeba(
    root: Path,
    sizes: Sequence[int] = (12, 12, 12, 12, 12, 12, 12, 12, 3),
    partitions: Sequence[int] = (0, 0, 0, 0, 0, 0, 1, 2, 0),
    seed: int = 0,
) -> CelebAFixture:
    """A small CelebA in the official layout under ``root``: identity i (a made-up CelebA id) has
    ``sizes[i]`` images, all in official partition ``partitions[i]``; image numbers are shuffled
    across identities. Each attribute is drawn with probability 1/2 and is learnable from the
    pixels: attribute k is 1 when cell :func:`celeba_cell` (k) is bright (220), -1 when it is dark
    (35), on a grey background whose level depends on the identity. The bands above and below the
    centred square are white (the crop removes them). The list files are spaced as CelebA's:
    values right-aligned in two characters, one space apart; a trailing space after the header."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 10178), size=len(sizes), replace=False)
    identity_of = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    n = len(identity_of)
    values = np.where(rng.random((n, len(CELEBA_ATTRIBUTES))) < 0.5, 1, -1)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    width, height = CELEBA_SIZE
    for i, name in enumerate(names):
        level = 70 + 10 * identity_of[i]
        pixels = np.clip(rng.normal(level, 8, size=(height, width, 3)), 0, 255)
        pixels[:20], pixels[198:] = 255, 255
        for k, value in enumerate(values[i]):
            top, bottom, left, right = celeba_cell(k)
            pixels[top:bottom, left:right] = 220 if value == 1 else 35
        Image.fromarray(pixels.astype(np.uint8)).save(root / "img_align_celeba" / name, quality=90)
    attribute_lines = [
        f"{name} " + " ".join(f"{v:2d}" for v in row)
        for name, row in zip(names, values, strict=True)
    ]
    (root / "list_attr_celeba.txt").write_text(
        "\n".join([str(n), " ".join(CELEBA_ATTRIBUTES) + " ", *attribute_lines]) + "\n"
    )
    (root / "identity_CelebA.txt").write_text(
        "".join(f"{name} {ids[g]}\n" for name, g in zip(names, identity_of, strict=True))
    )
    part = np.asarray(partitions)[identity_of]
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{name} {p}\n" for name, p in zip(names, part, strict=True))
    )
    return CelebAFixture(root, names, ids[identity_of], part, values)
