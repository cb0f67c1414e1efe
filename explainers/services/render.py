"""Turn maps into pictures: heat-map overlays (OpenCV colormaps), guided maps, boxes."""

from __future__ import annotations

import cv2
import numpy as np
import torch

# Display name -> OpenCV colormap; the first is the default.
COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "magma": cv2.COLORMAP_MAGMA,
    "hot": cv2.COLORMAP_HOT,
}


def to_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    """A CPU float32 numpy copy of a tensor or array."""
    if isinstance(array, torch.Tensor):
        array = array.detach().float().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def colorize(heatmap: torch.Tensor | np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A map in [0, 1], (H, W) -> RGB uint8 (H, W, 3) through an OpenCV colormap."""
    if colormap not in COLORMAPS:
        raise ValueError(f"Unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}.")
    values = np.uint8(np.clip(to_numpy(heatmap), 0, 1) * 255)
    return cv2.cvtColor(cv2.applyColorMap(values, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def overlay(
    image: np.ndarray,
    heatmap: torch.Tensor | np.ndarray,
    colormap: str = "jet",
    opacity: float = 0.5,
) -> np.ndarray:
    """Lay a [0, 1] heat map over an RGB uint8 image of the same size.

    Args:
        image: (H, W, 3) uint8, the image the model saw.
        heatmap: (H, W) in [0, 1].
        colormap: a key of `COLORMAPS`.
        opacity: weight of the heat map, 0 (image only) to 1 (heat map only).

    Returns:
        (H, W, 3) uint8.
    """
    colored = colorize(heatmap, colormap)
    if colored.shape[:2] != image.shape[:2]:
        raise ValueError(f"Map {colored.shape[:2]} and image {image.shape[:2]} differ in size.")
    blended = (1 - opacity) * image.astype(np.float32) + opacity * colored.astype(np.float32)
    return np.uint8(np.clip(blended, 0, 255).round())


def draw_box(
    image: np.ndarray,
    box: tuple[int, int, int, int],
    colour: tuple[int, int, int] = (255, 0, 255),
    thickness: int = 2,
) -> np.ndarray:
    """An RGB uint8 copy of ``image`` with ``box`` (x0, y0, x1, y1; x1, y1 exclusive) outlined.

    Magenta by default: it stands out on both the photographs and the jet-coloured overlays.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    outlined = np.ascontiguousarray(image, dtype=np.uint8).copy()
    return cv2.rectangle(outlined, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), colour, thickness)


def picture(
    kind: str,
    values: torch.Tensor | np.ndarray,
    crop: np.ndarray,
    colormap: str = "jet",
    opacity: float = 0.5,
) -> np.ndarray:
    """A map as shown: a heat-map overlay on ``crop`` for a CAM (``kind`` "cam"), the papers'
    display for a guided map (``kind`` "guided", see `Method.kind`). RGB uint8 (H, W, 3)."""
    if kind == "guided":
        from explainers.methods.guided import guided_to_image  # guided registers methods: import on use

        return guided_to_image(values)
    return overlay(crop, values, colormap, opacity)
