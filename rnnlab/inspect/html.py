"""Self-contained HTML pages of coloured text (inline CSS, no script, no network): one span per
character, its background the measured value, a tooltip on hover."""

from __future__ import annotations

import html

import numpy as np

from .cells import unit_values
from .colours import SCALES, colours, hex_colour, text_colour

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
.meta { color: #555; font-size: 13px; }
.text { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 15px; line-height: 1.7;
        white-space: pre-wrap; word-break: break-all; border: 1px solid #ddd; padding: 10px; }
.text span { position: relative; }
.text span.ctx { color: #999; }
.text span[data-tip]:hover { outline: 1px solid #000; }
.text span[data-tip]:hover::after { content: attr(data-tip); position: absolute; left: 0; top: 1.5em;
        z-index: 10; white-space: pre; background: #222; color: #fff; padding: 4px 8px; font-size: 12px;
        border-radius: 3px; line-height: 1.4; }
.legend { display: flex; align-items: center; gap: 8px; font-size: 12px; margin: 10px 0; }
.legend .bar { width: 240px; height: 12px; border: 1px solid #aaa; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
"""


def visible(ch: str) -> str:
    """A character as it shows in a tooltip or a label: space ␣, end of line ↵, tab →."""
    return {" ": "␣", "\n": "↵", "\t": "→"}.get(ch, ch)


def legend(vmin: float, vmax: float, scale: str, label: str) -> str:
    stops = ", ".join(f"{hex_colour(rgb)} {100 * p:.0f}%" for p, rgb in SCALES[scale])
    return (f'<div class="legend"><span>{vmin:g}</span><div class="bar" style="background: '
            f'linear-gradient(to right, {stops})"></div><span>{vmax:g}</span><span>{html.escape(label)}</span></div>')


def coloured_text(chars: str, values, vmin: float, vmax: float, scale: str, tips, context: str = "",
                  breaks: bool = True) -> str:
    """A ``<div class="text">`` of ``context`` (uncoloured) then ``chars``, each character's background
    the colour of its value, its tooltip the matching entry of ``tips``; an end of line shows as ↵ and
    also breaks the line if ``breaks``."""
    rgb = colours(values, vmin, vmax, scale)
    out = ['<div class="text">']
    out += [f'<span class="ctx">{html.escape(visible(c))}</span>' + _newline(c, breaks) for c in context]
    for ch, c, tip in zip(chars, rgb, tips):
        shown = "↵" if ch == "\n" else html.escape(ch)
        out.append(f'<span style="background:{hex_colour(c)};color:{text_colour(c)}" '
                   f'data-tip="{html.escape(tip)}">{shown}</span>' + _newline(ch, breaks))
    out.append("</div>")
    return "".join(out)


def _newline(ch: str, breaks: bool) -> str:
    return "\n" if ch == "\n" and breaks else ""


def page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def surprise_page(reading, s, title: str, meta: str, vmax: float = 5.0, breaks: bool = True) -> str:
    """The surprise view: each scored character coloured by its loss (0 … ``vmax`` nats), the top
    guesses on hover."""
    vocab_chars = reading.chars
    tips = []
    for t, ch in enumerate(reading.scored):
        guesses = "\n".join(f"{i + 1}. {visible(vocab_chars[g])}  {100 * p:.1f}%"
                            for i, (g, p) in enumerate(zip(s.guesses[t], s.probs[t])))
        tips.append(f"{visible(ch)}: {s.loss[t]:.2f} nats (p = {np.exp(-s.loss[t]):.3f})\nguesses:\n{guesses}")
    context = reading.text[0] if reading.text[0] != "\n" else ""
    body = (f"<h1>{html.escape(title)}</h1><p class='meta'>{html.escape(meta)}</p>"
            f"<p>Mean loss <b>{s.mean:.4f} nats/char</b> ({s.mean / np.log(2):.4f} bits/char) over "
            f"{len(s.loss)} characters. Hover over a character for its loss and the model's top "
            f"{s.guesses.shape[1]} guesses for it.</p>"
            + legend(0, vmax, "surprise", "nats (loss of the character)")
            + coloured_text(reading.scored, s.loss, 0, vmax, "surprise", tips, context, breaks))
    return page(title, body)


def cells_page(reading, ranking, title: str, meta: str, show: int, breaks: bool = True) -> str:
    """The cells view: the ranking table, then each property's best unit as coloured text."""
    rows = [(prop, i + 1, u.name, f"{u.r:+.3f}") for prop, units in ranking.items() for i, u in enumerate(units)]
    parts = [f"<h1>{html.escape(title)}</h1><p class='meta'>{html.escape(meta)}</p>",
             ("<p>Units ranked by |r|, the absolute Pearson correlation of the unit's activation with the "
              "property over the text's steps. Below, each property's best unit over the first "
              f"{min(show, len(reading))} characters: blue negative, red positive (scaled to the unit's "
              "largest |value| shown); hover for the value.</p>"),
             table(("property", "rank", "unit", "r"), rows)]
    chars = reading.read[:show]
    for prop, units in ranking.items():
        u = units[0]
        vals = unit_values(reading, u)[:show]
        vmax = float(np.abs(vals).max()) or 1.0
        tips = [f"{u.kind}[{u.unit}] = {v:+.3f}" for v in vals]
        parts.append(f"<h2>{html.escape(prop)}: {html.escape(u.name)}, r = {u.r:+.3f}</h2>"
                     + legend(-round(vmax, 3), round(vmax, 3), "diverging", "activation")
                     + coloured_text(chars, vals, -vmax, vmax, "diverging", tips, breaks=breaks))
    return page(title, "\n".join(parts))
