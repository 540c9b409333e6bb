"""The views written to a folder: what ``python -m rnnlab.inspect`` does once it has a model and a text.

    surprise.html / surprise.png     each character coloured by its loss, top guesses on hover
    cells.html / cells.png           each property's best unit as coloured text; units.csv the ranking
    cells_heatmap.png                every unit over the first steps
    gates.png / gates.csv            gate saturation per unit (LSTM, GRU)
    gradient_flow.png / .csv         ‖∂loss_t/∂h_{t−k}‖ against k, per layer
    summary.json                     the headline numbers of each view
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
import json
from pathlib import Path

import numpy as np

from . import figures
from .cells import rank_units, unit_values
from .colours import colours
from .gates import GATES, gate_saturation
from .gradflow import gradient_flow
from .html import cells_page, surprise_page
from .reading import read
from .surprise import surprise

VIEWS = ("surprise", "cells", "gates", "gradient_flow")


def write_views(out, lm, params, vocab, text: str, lines: bool, views=VIEWS, flow_ids=None, *,
                source: str = "", top: int = 5, show: int = 1000, max_distance: int = 100, windows: int = 256,
                seed: int = 0) -> dict:
    """Write ``views`` of the model reading ``text`` (prepared by ``prepare_text``) into the folder
    ``out``; the gradient flow is measured on ``flow_ids`` (held-out ids; None: the text's). ``source``
    says where the model and the text come from, in the titles. Returns the summary (also written as
    summary.json), with the list of files written under ``files``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    page = _Page(out, meta=f"{lm!r}; {source}" if source else repr(lm),
                 label=f"{lm.cell_name.upper()} {lm.num_layers}×{lm.hidden_size}" + (f" · {source}" if source else ""),
                 breaks=not lines)   # names flow one after the other (↵ between them); running text keeps its lines
    reading = read(lm, params, vocab, text, lines)
    summary, files = {"model": repr(lm), "source": source, "characters": len(reading)}, []
    if "surprise" in views:
        summary["surprise"] = _surprise(page, reading, show, files)
    if "cells" in views:
        summary["cells"] = _cells(page, reading, top, show, files)
    if "gates" in views and lm.cell_name in GATES:
        summary["gates"] = _gates(page, reading, files)
    if "gradient_flow" in views:
        ids = vocab.encode(text) if flow_ids is None else flow_ids
        flow = gradient_flow(lm, params, ids, max_distance, windows, np.random.default_rng(seed))
        summary["gradient_flow"] = _flow(page, lm, flow, files)
    summary["files"] = files + ["summary.json"]
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    return summary


@dataclass
class _Page:
    """Where the views go and how they are titled."""
    out: Path
    meta: str       # the HTML pages' subtitle: the model and where it comes from
    label: str      # the figures' title
    breaks: bool    # show line breaks as ↵ (names) or keep them (running text)


def _csv(path, header, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _surprise(page: _Page, reading, show: int, files: list) -> dict:
    """surprise.html and surprise.png: each character coloured by its loss."""
    s = surprise(reading)
    (page.out / "surprise.html").write_text(surprise_page(reading, s, "Surprise", page.meta, breaks=page.breaks),
                                            encoding="utf-8")
    n = min(show, len(reading))
    figures.coloured_text(page.out / "surprise.png", [(
        f"Loss of each character (first {n} of {len(reading)}), mean {s.mean:.3f} nats/char",
        reading.scored[:n], colours(s.loss[:n], 0, 5, "surprise"), (0, 5, "surprise", "nats"))],
        title=page.label, breaks=page.breaks)
    files += ["surprise.html", "surprise.png"]
    worst = np.argsort(-s.loss, kind="stable")[:5]
    return {"mean_nats": s.mean, "mean_bits": s.mean / np.log(2),
            "most_surprising": [[reading.scored[t], float(s.loss[t]), int(t)] for t in worst]}


def _cells(page: _Page, reading, top: int, show: int, files: list) -> dict:
    """cells.html, units.csv, cells.png (each property's best unit) and the heat map of every unit."""
    ranking = rank_units(reading, top=top)
    (page.out / "cells.html").write_text(cells_page(reading, ranking, "Cells", page.meta, show, page.breaks),
                                         encoding="utf-8")
    _csv(page.out / "units.csv", ["property", "rank", "layer", "kind", "unit", "r"],
         ([prop, i + 1, u.layer, u.kind, u.unit, f"{u.r:.6f}"]
          for prop, units in ranking.items() for i, u in enumerate(units)))
    n = min(show, len(reading), 400)
    panels = []
    for prop, units in ranking.items():
        vals = unit_values(reading, units[0])[:n]
        vmax = float(np.abs(vals).max()) or 1.0
        panels.append((f"{prop}: {units[0].name}, r = {units[0].r:+.3f}", reading.read[:n],
                       colours(vals, -vmax, vmax, "diverging"), (-round(vmax, 2), round(vmax, 2), "diverging",
                                                                 "activation")))
    if panels:
        figures.coloured_text(page.out / "cells.png", panels, title=page.label, breaks=page.breaks)
        files.append("cells.png")
    figures.heatmap(page.out / "cells_heatmap.png", reading, title=page.label)
    files += ["cells.html", "units.csv", "cells_heatmap.png"]
    return {prop: [{"unit": u.name, "r": u.r} for u in units] for prop, units in ranking.items()}


def _gates(page: _Page, reading, files: list) -> list:
    """gates.png (the saturation scatter) and gates.csv."""
    sat = gate_saturation(reading)
    figures.gates(page.out / "gates.png", sat, title=page.label)
    _csv(page.out / "gates.csv", ["layer", "gate", "unit", "left_saturated", "right_saturated"],
         ([k, g, j, f"{a:.6f}", f"{b:.6f}"] for k, layer in enumerate(sat) for g, (left, right) in layer.items()
          for j, (a, b) in enumerate(zip(left, right))))
    files += ["gates.png", "gates.csv"]
    return [{g: {"left_mean": float(a.mean()), "right_mean": float(b.mean())} for g, (a, b) in layer.items()}
            for layer in sat]


def _flow(page: _Page, lm, flow, files: list) -> dict:
    """gradient_flow.png and gradient_flow.csv."""
    figures.gradient_flow(page.out / "gradient_flow.png", {lm.cell_name: flow},
                          title=f"{page.label} · {flow.windows} windows")
    _csv(page.out / "gradient_flow.csv", ["layer", "distance", "mean", "q10", "q50", "q90"],
         ([k, d, *(f"{v[k, d]:.6e}" for v in (flow.mean, flow.q10, flow.q50, flow.q90))]
          for k in range(len(flow.mean)) for d in flow.distance))
    files += ["gradient_flow.png", "gradient_flow.csv"]
    return {"windows": flow.windows, "mean_top_layer": {
        str(d): float(flow.mean[-1, d]) for d in (0, 1, 2, 5, 10, 20, 50, 100) if d < len(flow.distance)}}
