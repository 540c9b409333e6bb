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
    meta = f"{lm!r}; {source}" if source else repr(lm)
    label = f"{lm.cell_name.upper()} {lm.num_layers}×{lm.hidden_size}" + (f" · {source}" if source else "")
    breaks = not lines   # names flow one after the other (↵ between them); running text keeps its lines
    reading = read(lm, params, vocab, text, lines)
    summary, files = {"model": repr(lm), "source": source, "characters": len(reading)}, []

    if "surprise" in views:
        s = surprise(reading)
        (out / "surprise.html").write_text(surprise_page(reading, s, "Surprise", meta, breaks=breaks), encoding="utf-8")
        n = min(show, len(reading))
        figures.coloured_text(out / "surprise.png", [(
            f"Loss of each character (first {n} of {len(reading)}), mean {s.mean:.3f} nats/char",
            reading.scored[:n], colours(s.loss[:n], 0, 5, "surprise"), (0, 5, "surprise", "nats"))],
            title=label, breaks=breaks)
        worst = np.argsort(-s.loss, kind="stable")[:5]
        summary["surprise"] = {"mean_nats": s.mean, "mean_bits": s.mean / np.log(2),
                               "most_surprising": [[reading.scored[t], float(s.loss[t]), int(t)] for t in worst]}
        files += ["surprise.html", "surprise.png"]

    if "cells" in views:
        ranking = rank_units(reading, top=top)
        (out / "cells.html").write_text(cells_page(reading, ranking, "Cells", meta, show, breaks), encoding="utf-8")
        with open(out / "units.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["property", "rank", "layer", "kind", "unit", "r"])
            for prop, units in ranking.items():
                for i, u in enumerate(units):
                    w.writerow([prop, i + 1, u.layer, u.kind, u.unit, f"{u.r:.6f}"])
        n = min(show, len(reading), 400)
        panels = []
        for prop, units in ranking.items():
            vals = unit_values(reading, units[0])[:n]
            vmax = float(np.abs(vals).max()) or 1.0
            panels.append((f"{prop}: {units[0].name}, r = {units[0].r:+.3f}", reading.read[:n],
                           colours(vals, -vmax, vmax, "diverging"), (-round(vmax, 2), round(vmax, 2), "diverging",
                                                                     "activation")))
        if panels:
            figures.coloured_text(out / "cells.png", panels, title=label, breaks=breaks)
            files.append("cells.png")
        figures.heatmap(out / "cells_heatmap.png", reading, title=label)
        summary["cells"] = {prop: [{"unit": u.name, "r": u.r} for u in units] for prop, units in ranking.items()}
        files += ["cells.html", "units.csv", "cells_heatmap.png"]

    if "gates" in views and lm.cell_name in GATES:
        sat = gate_saturation(reading)
        figures.gates(out / "gates.png", sat, title=label)
        with open(out / "gates.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["layer", "gate", "unit", "left_saturated", "right_saturated"])
            for k, layer in enumerate(sat):
                for g, (left, right) in layer.items():
                    w.writerows([k, g, j, f"{a:.6f}", f"{b:.6f}"] for j, (a, b) in enumerate(zip(left, right)))
        summary["gates"] = [{g: {"left_mean": float(a.mean()), "right_mean": float(b.mean())}
                             for g, (a, b) in layer.items()} for layer in sat]
        files += ["gates.png", "gates.csv"]

    if "gradient_flow" in views:
        ids = vocab.encode(text) if flow_ids is None else flow_ids
        flow = gradient_flow(lm, params, ids, max_distance, windows, np.random.default_rng(seed))
        figures.gradient_flow(out / "gradient_flow.png", {lm.cell_name: flow},
                              title=f"{label} · {flow.windows} windows")
        with open(out / "gradient_flow.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["layer", "distance", "mean", "q10", "q50", "q90"])
            for k in range(len(flow.mean)):
                w.writerows([k, d, *(f"{v[k, d]:.6e}" for v in (flow.mean, flow.q10, flow.q50, flow.q90))]
                            for d in flow.distance)
        summary["gradient_flow"] = {"windows": flow.windows, "mean_top_layer": {
            str(d): float(flow.mean[-1, d]) for d in (0, 1, 2, 5, 10, 20, 50, 100) if d < len(flow.distance)}}
        files += ["gradient_flow.png", "gradient_flow.csv"]

    summary["files"] = files + ["summary.json"]
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    return summary
