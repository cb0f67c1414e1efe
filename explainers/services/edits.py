"""Edit the image the model sees: fill a box with blur, grey, the mean colour or a patch from
elsewhere, to watch how the prediction and the maps change (a counterfactual made by hand).

Boxes are (x0, y0, x1, y1) in pixels of the model's crop (x1, y1 exclusive), as the region check
uses them. Every problem with a box is an `EditError` with one line that says what to change.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from explainers.errors import ExplainerInputError

Box = tuple[int, int, int, int]

# Fill -> what it puts in the box, for captions.
FILLS: dict[str, str] = {
    "grey": "mid-grey",
    "blur": "blurred (detail removed, colours kept)",
    "mean": "the image's mean colour",
    "patch": "a patch copied from elsewhere in the image",
}
GREY = 128


class EditError(ExplainerInputError):
    """The edit cannot be applied: a box outside the image, of no area, or an unknown fill."""


@dataclass(frozen=True)
class ImageEdit:
    """A box filled with something else.

    Attributes:
        box: (x0, y0, x1, y1) in the crop's pixels, x1 and y1 exclusive.
        fill: a key of `FILLS`.
        offset: for "patch": (dx, dy), where the copied patch comes from: the box moved by it.
    """

    box: Box
    fill: str = "grey"
    offset: tuple[int, int] = (0, 0)

    @property
    def source(self) -> Box:
        """The box a patch is copied from."""
        (x0, y0, x1, y1), (dx, dy) = self.box, self.offset
        return (x0 + dx, y0 + dy, x1 + dx, y1 + dy)

    def describe(self) -> str:
        """One line for captions, e.g. "box x 60–160, y 40–120 filled with mid-grey"."""
        x0, y0, x1, y1 = self.box
        text = f"box x {x0}–{x1}, y {y0}–{y1} filled with {FILLS.get(self.fill, self.fill)}"
        if self.fill == "patch":
            text += f" (from {self.offset[0]:+d}, {self.offset[1]:+d} px away)"
        return text


def check_edit(edit: ImageEdit, size: tuple[int, int]) -> None:
    """Raise `EditError` unless ``edit`` can be applied to an image of ``size`` (width, height)."""
    width, height = size
    if edit.fill not in FILLS:
        raise EditError(f"Unknown fill {edit.fill!r}; choose one of {', '.join(FILLS)}.")
    x0, y0, x1, y1 = edit.box
    if x1 <= x0 or y1 <= y0:
        raise EditError(
            f"The box x {x0}–{x1}, y {y0}–{y1} has no area: the right edge must lie right of the left "
            "one and the bottom below the top."
        )
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise EditError(
            f"The box x {x0}–{x1}, y {y0}–{y1} reaches outside the {width}×{height} image: x must lie "
            f"in 0–{width} and y in 0–{height}."
        )
    if edit.fill == "patch":
        if edit.offset == (0, 0):
            raise EditError(
                "The patch's offset is 0, 0: the box would be copied onto itself; move its source."
            )
        sx0, sy0, sx1, sy1 = edit.source
        if sx0 < 0 or sy0 < 0 or sx1 > width or sy1 > height:
            raise EditError(
                f"The patch's source, x {sx0}–{sx1}, y {sy0}–{sy1}, reaches outside the {width}×{height} "
                "image; choose a smaller offset or a smaller box."
            )


def apply_edit(image: np.ndarray, edit: ImageEdit) -> np.ndarray:
    """A copy of an RGB uint8 image (H, W, 3) with the edit applied.

    Raises:
        EditError: see `check_edit`.
    """
    height, width = image.shape[:2]
    check_edit(edit, (width, height))
    edited = np.array(image, dtype=np.uint8, copy=True)
    x0, y0, x1, y1 = edit.box
    if edit.fill == "grey":
        edited[y0:y1, x0:x1] = GREY
    elif edit.fill == "mean":
        edited[y0:y1, x0:x1] = image.reshape(-1, 3).mean(0).round().astype(np.uint8)
    elif edit.fill == "blur":
        # Strong enough to wipe out the box's detail: a sigma of a quarter of its longer side.
        sigma = max(2.0, max(x1 - x0, y1 - y0) / 4)
        edited[y0:y1, x0:x1] = cv2.GaussianBlur(image, (0, 0), sigma)[y0:y1, x0:x1]
    else:
        sx0, sy0, sx1, sy1 = edit.source
        edited[y0:y1, x0:x1] = image[sy0:sy1, sx0:sx1]
    return edited
