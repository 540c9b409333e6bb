"""The PNG figures of the views, and of a run's learning curves (matplotlib, imported when a figure is
drawn)."""

from __future__ import annotations

import numpy as np

from .colours import colours
from .gates import GATE_NAMES
from .html import visible


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _grid(chars: str, cols: int, breaks: bool):
    """(row, column) of each character when the text is wrapped at ``cols`` and, if ``breaks``, after
    each end of line."""
    pos, r, c = [], 0, 0
    for ch in chars:
        if c >= cols:
            r, c = r + 1, 0
        pos.append((r, c))
        r, c = (r + 1, 0) if ch == "\n" and breaks else (r, c + 1)
    return pos


def coloured_text(path, panels, title: str = "", cols: int = 100, breaks: bool = True):
    """Coloured text as a PNG: ``panels`` is a list of (heading, chars, rgb (N, 3), legend) where
    ``legend`` is (vmin, vmax, scale, label) or None; each panel is the text wrapped at ``cols`` (and
    at each end of line if ``breaks``; ↵ marks it), each character on a cell of its colour."""
    plt = _pyplot()
    if breaks:  # no wider than the longest line
        cols = min(cols, 1 + max(len(line) for _, chars, _, _ in panels for line in chars.split("\n")))
    labels = [heading + (f"   [{leg[3]}: {_scale_words(leg[2])} from {leg[0]:g} to {leg[1]:g}]" if leg else "")
              for heading, _, _, leg in panels]
    cols = max(cols, 40, *(int(0.72 * len(label)) + 1 for label in labels))  # room for the headings
    grids = [_grid(chars, cols, breaks) for _, chars, _, _ in panels]
    rows = [(g[-1][0] + 1) if g else 1 for g in grids]
    width = 0.105 * cols + 0.4
    heights = [0.22 * r + 0.6 for r in rows]
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, sum(heights) + (0.3 if title else 0)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False, dpi=110)
    for ax, (_, chars, rgb, _), label, grid, nrows in zip(axes[:, 0], panels, labels, grids, rows):
        img = np.ones((nrows, cols, 3))
        for (r, c), colour in zip(grid, rgb):
            img[r, c] = colour
        ax.imshow(img, aspect="auto", interpolation="nearest", extent=(0, cols, nrows, 0))
        for (r, c), ch, colour in zip(grid, chars, rgb):
            shown = "↵" if ch == "\n" else ch
            if shown.strip():
                dark = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] < 0.5
                ax.text(c + 0.5, r + 0.55, shown, ha="center", va="center", family="monospace",
                        fontsize=8.5, color="white" if dark else "black")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_color("#ccc")
        ax.set_title(label, fontsize=9, loc="left")
    _finish(fig, title)
    fig.savefig(path)
    plt.close(fig)
    return path


def _finish(fig, title: str):
    """A figure title above the panels (room made for it), then a tight layout."""
    if title:
        import textwrap
        lines = textwrap.wrap(title, max(30, int(fig.get_figwidth() * 72 / 5.8)))  # ~5.8 pt per character
        fig.suptitle("\n".join(lines), fontsize=10, x=0.01, ha="left")
        top = 1 - (0.02 + 0.17 * len(lines)) / fig.get_figheight()
        fig.tight_layout(rect=(0, 0, 1, top))
    else:
        fig.tight_layout()


def _scale_words(scale: str) -> str:
    return {"surprise": "white → yellow → red", "diverging": "blue → white → red"}[scale]


def heatmap(path, reading, steps: int = 160, title: str = ""):
    """Every unit's activation (rows) over the first ``steps`` steps (columns, labelled with the
    character read), one panel per layer and kind (h, c), blue negative, red positive."""
    from .cells import activations
    plt = _pyplot()
    acts = activations(reading)
    chars = reading.read[:steps]
    n = len(chars)
    H = next(iter(acts.values())).shape[1]
    fig, axes = plt.subplots(len(acts), 1, figsize=(max(8.0, 0.09 * n + 1.5), len(acts) * (1.2 + 0.025 * H)),
                             squeeze=False, dpi=110)
    for ax, ((k, kind), a) in zip(axes[:, 0], acts.items()):
        vals = a[:n].T
        vmax = 1.0 if kind == "h" else float(np.abs(vals).max()) or 1.0
        ax.imshow(colours(vals, -vmax, vmax, "diverging"), aspect="auto", interpolation="nearest")
        ax.set_xticks(range(n))
        ax.set_xticklabels([visible(c) for c in chars], fontsize=6, family="monospace")
        ax.tick_params(axis="x", length=0, pad=1)
        ax.set_ylabel("unit", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"layer {k} {kind} (blue −{vmax:.3g} … red +{vmax:.3g})", fontsize=9, loc="left")
    _finish(fig, title)
    fig.savefig(path)
    plt.close(fig)
    return path


GATE_COLOURS = {"i": "tab:blue", "f": "tab:green", "o": "tab:red", "r": "tab:purple", "u": "tab:orange"}


def gates(path, saturation: list[dict], title: str = ""):
    """The fraction of steps each gate unit is left-saturated (x) and right-saturated (y), one panel
    per layer, as in Karpathy et al. (2015)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(saturation), figsize=(4.4 * len(saturation) + 0.4, 4.9), squeeze=False,
                             dpi=110)
    for k, (ax, layer) in enumerate(zip(axes[0], saturation)):
        ax.plot([0, 1], [1, 0], color="#bbb", lw=0.8)   # left + right ≤ 1
        for g, (left, right) in layer.items():
            ax.scatter(left, right, s=12, alpha=0.6, color=GATE_COLOURS[g], label=f"{GATE_NAMES[g]} gate ({g})")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("fraction of steps left-saturated (< 0.1)", fontsize=8)
        ax.set_ylabel("fraction right-saturated (> 0.9)", fontsize=8)
        ax.set_title(f"layer {k}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    _finish(fig, title)
    fig.savefig(path)
    plt.close(fig)
    return path


CELL_COLOURS = {"rnn": "tab:blue", "lstm": "tab:orange", "gru": "tab:green"}


def gradient_flow(path, curves: dict, title: str = "", every_layer: bool = True, stats=("mean",)):
    """‖∂loss_t/∂h_{t−k}‖ against k on a log scale, one panel per statistic over the windows in
    ``stats`` ("mean", "median"): ``curves`` maps a label to a ``GradientFlow``; every layer of each (or
    only the top one), the band from the 10th to the 90th percentile of the windows. A label that
    starts with a cell's name gets that cell's colour; one that ends with "at initialisation" is
    dashed, without a band."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(stats), figsize=(8 if len(stats) == 1 else 6.5 * len(stats), 5), dpi=110,
                             squeeze=False, sharey=True)
    for ax, stat in zip(axes[0], stats):
        for label, flow in curves.items():
            values = {"mean": flow.mean, "median": flow.q50}[stat]
            layers = range(len(flow.mean)) if every_layer else [len(flow.mean) - 1]
            fresh = label.endswith("at initialisation")
            colour = CELL_COLOURS.get(label.split(" ")[0].lower())
            for k in layers:
                name = label if len(flow.mean) == 1 or not every_layer else f"{label} layer {k}"
                line, = ax.plot(flow.distance, values[k], label=name, lw=1.2 if fresh else 1.8,
                                ls="--" if fresh else "-", color=colour if len(layers) == 1 else None)
                if not fresh:
                    ax.fill_between(flow.distance, np.maximum(flow.q10[k], 1e-300), flow.q90[k],
                                    color=line.get_color(), alpha=0.12, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel("distance k (steps back from the scored character)")
        ax.set_title(f"{stat} over the windows", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("‖∂loss_t / ∂h_{t−k}‖")
    axes[0, -1].legend(fontsize=7.5)
    _finish(fig, title)
    fig.savefig(path)
    plt.close(fig)
    return path


def learning_curve(history, title: str = ""):
    """A run's training loss (each step, faint, and smoothed) and validation loss in nats per character
    against the steps done, as a matplotlib ``Figure`` made without pyplot (nothing to close)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7.5, 4.2), dpi=110)
    ax = fig.subplots()
    steps = [s + 1 for s in history.step]
    if steps:
        ax.plot(steps, history.train_loss, color="tab:blue", alpha=0.2, lw=0.8, label="training batch")
        ax.plot(steps, history.smooth_loss, color="tab:blue", lw=1.6, label="training (smoothed)")
    if history.eval_step:
        ax.plot([s + 1 for s in history.eval_step], history.val_nll, color="tab:orange", marker=".", lw=1.6,
                label="validation")
    if history.best_step is not None and history.val_nll:
        ax.axvline(history.best_step + 1, color="#999", ls=":", lw=1,
                   label=f"best validation: {min(history.val_nll):.4f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / character)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
