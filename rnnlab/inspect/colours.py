"""The colour scales shared by the HTML pages and the PNG figures (so both read alike), computed here
rather than by matplotlib so that a page needs nothing but NumPy."""

from __future__ import annotations

import numpy as np

# (position in [0, 1], RGB) stops, interpolated linearly
SCALES = {
    # surprise: white (no surprise) → yellow → orange → red → dark red
    "surprise": [(0.0, (1.0, 1.0, 1.0)), (0.25, (1.0, 0.93, 0.55)), (0.5, (0.99, 0.6, 0.25)),
                 (0.75, (0.89, 0.2, 0.15)), (1.0, (0.55, 0.0, 0.1))],
    # activations: blue (negative) → white (zero) → red (positive)
    "diverging": [(0.0, (0.13, 0.4, 0.67)), (0.25, (0.57, 0.77, 0.87)), (0.5, (0.97, 0.97, 0.97)),
                  (0.75, (0.96, 0.65, 0.51)), (1.0, (0.7, 0.09, 0.17))],
}


def colours(values, vmin: float, vmax: float, scale: str = "surprise") -> np.ndarray:
    """RGB in [0, 1] of each value (any shape → shape + (3,)); values outside [vmin, vmax] are clipped."""
    stops = SCALES[scale]
    pos = np.array([s[0] for s in stops])
    rgb = np.array([s[1] for s in stops])
    u = np.clip((np.asarray(values, np.float64) - vmin) / (vmax - vmin), 0, 1)
    return np.stack([np.interp(u, pos, rgb[:, c]) for c in range(3)], axis=-1)


def hex_colour(rgb) -> str:
    return "#" + "".join(f"{round(255 * float(v)):02x}" for v in rgb)


def text_colour(rgb) -> str:
    """Black or white, whichever reads better on the background ``rgb``."""
    r, g, b = rgb
    return "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "#fff"
