"""Attributions as self-contained HTML pages a person reads (pure functions: text in, text out).

:func:`render_page` shows one or more attributions on one page. Per attribution: the question,
the attributed answer (and the reference), every context text in input order as one shaded
``<span class="ctx">`` — shade from the score, scaled within the attribution from its lowest (0,
white) to its highest score (1, :data:`FULL_RGB`), as the TensorBoard heatmap does — with a
legend, ground-truth marks (✓), the top-k outlined and numbered, each text's kind where the
probe labels them, the credit share by kind, the top-k table, and the method with its settings.
:func:`render_index` lists the AttributionCallback's logging points with their scalars.

Pages load nothing: inline CSS only, no scripts, no fonts, no images, and a
Content-Security-Policy that forbids any request. Every piece of text goes through
:func:`html.escape`. Each shaded span carries its numbers as attributes (``data-index``,
``data-score``, ``data-shade``, ``data-rank``, ``data-kind``, ``data-relevant``) so a test, or a
script of the reader's, can check the page against the scores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from lit_attn.attribution.examples import AttributionExample
from lit_attn.attribution.kinds import final_value, follows_injection, kind_shares
from lit_attn.attribution.result import AttributionResult

FULL_RGB = (239, 108, 0)
"""The shade of a text with the attribution's highest score (black text on it: contrast 6.8:1)."""

_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1d1d1f; background: #fafafa; margin: 0; padding: 24px 32px 48px; }
main { max-width: 1100px; margin: 0 auto; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 0 0 12px; }
h3 { font-size: 14px; text-transform: uppercase; letter-spacing: .04em; color: #555; margin: 18px 0 6px; }
.subtitle { color: #555; margin: 0 0 16px; }
nav a, .back { color: #0b57d0; }
section.example { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 18px 22px; margin: 18px 0; }
dl.qa { display: grid; grid-template-columns: max-content 1fr; gap: 4px 14px; margin: 0; }
dl.qa dt { font-weight: 600; color: #444; }
dl.qa dd { margin: 0; }
pre { font: 14px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; white-space: pre-wrap; word-break: break-word;
      margin: 0; background: #f3f3f3; padding: 4px 8px; border-radius: 4px; }
.legend { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 18px; font-size: 13px; color: #333; margin: 8px 0 10px; }
.bar { display: inline-block; width: 160px; height: 14px; border: 1px solid #bbb; vertical-align: middle;
       background: linear-gradient(to right, rgb(255,255,255), rgb(%(full)s)); }
.context { line-height: 1.5; }
.ctx { display: inline-block; max-width: 100%%; margin: 0 6px 7px 0; padding: 3px 7px; border: 1px solid #d0d0d0;
       border-radius: 5px; white-space: pre-wrap; word-break: break-word; vertical-align: top; }
.ctx.top { border: 2px solid #1d1d1f; padding: 2px 6px; }
.idx { font-size: 11px; color: #333; margin-right: 4px; }
.kind { font-size: 11px; color: #333; background: rgba(255,255,255,.75); border: 1px solid #aaa; border-radius: 9px;
        padding: 0 6px; margin-left: 6px; }
.truth { color: #0a7a2f; font-weight: 700; margin-left: 5px; background: #fff; border: 1px solid #0a7a2f;
         border-radius: 9px; padding: 0 5px; font-size: 12px; }
.rank { font-size: 11px; font-weight: 700; margin-left: 5px; }
.sample { display: inline-block; padding: 0 6px; border: 1px solid #d0d0d0; border-radius: 5px; background: #fff; }
.sample.top { border: 2px solid #1d1d1f; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0; }
th, td { border-bottom: 1px solid #e2e2e2; padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
th { color: #444; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.share { display: inline-block; height: 10px; background: rgb(%(full)s); vertical-align: middle; }
.follows { font-weight: 600; color: #b3261e; }
.ignores { font-weight: 600; color: #0a7a2f; }
table.top-k td:last-child { white-space: pre-wrap; word-break: break-word; }
.wide { overflow-x: auto; }
table.index th { max-width: 9em; }
.columns { display: flex; flex-wrap: wrap; gap: 0 40px; }
"""


@dataclass(frozen=True)
class ReportItem:
    """One attribution on a page: where it comes from (``label``), its probe, its result, and how
    many of the best-ranked texts to outline and list (``k``)."""

    label: str
    example: AttributionExample
    result: AttributionResult
    k: int = 5


def shade_levels(scores: Sequence[float]) -> list[float]:
    """Each score scaled within its attribution from the lowest (0) to the highest (1); all 0.5
    when every score is the same (the TensorBoard heatmap's scaling)."""
    low, high = min(scores), max(scores)
    if not high > low:
        return [0.5] * len(scores)
    return [(float(s) - low) / (high - low) for s in scores]


def shade_rgb(level: float) -> tuple[int, int, int]:
    """The colour of a shade level in [0, 1]: white to :data:`FULL_RGB`, linearly."""
    level = min(max(level, 0.0), 1.0)
    return tuple(round(255 + (full - 255) * level) for full in FULL_RGB)  # type: ignore[return-value]


def _css_rgb(rgb: Sequence[int]) -> str:
    return f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})"


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"


def _setting(value: Any) -> str:
    """A method setting as text (JSON where it can be, else its repr)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _context_spans(item: ReportItem) -> str:
    """One shaded span per context text, in input order."""
    result, example, k = item.result, item.example, item.k
    levels = shade_levels(result.scores)
    rank = {index: position for position, index in enumerate(result.ranking, start=1)}
    truth = set(example.relevant or ())
    spans = []
    for i, (text, score, level) in enumerate(zip(result.contexts, result.scores, levels)):
        kind = example.kinds[i] if example.kinds is not None else None
        is_top = rank[i] <= k
        title = f"text {i} · score {_number(score)} · rank {rank[i]}" + (f" · {kind}" if kind else "") + (
            " · ground truth" if i in truth else ""
        )
        attributes = {
            "class": "ctx top" if is_top else "ctx",
            "data-index": str(i),
            "data-score": repr(float(score)),
            "data-shade": f"{level:.4f}",
            "data-rank": str(rank[i]),
            "title": title,
            "style": f"background-color: {_css_rgb(shade_rgb(level))}",
        }
        if kind is not None:
            attributes["data-kind"] = kind
        if example.relevant is not None:
            attributes["data-relevant"] = "1" if i in truth else "0"
        inner = [f'<span class="idx">[{i}]</span>{escape(text)}']
        if kind is not None:
            inner.append(f'<span class="kind">{escape(kind)}</span>')
        if i in truth:
            inner.append('<span class="truth" title="ground truth">✓</span>')
        if is_top:
            inner.append(f'<span class="rank">#{rank[i]}</span>')
        attrs = " ".join(f'{name}="{escape(value)}"' for name, value in attributes.items())
        spans.append(f"<span {attrs}>{''.join(inner)}</span>")
    return '<div class="context">' + "\n".join(spans) + "</div>"


def _legend(item: ReportItem) -> str:
    scores, k = item.result.scores, item.k
    parts = [
        f'<span>shade = score, from the lowest <b>{_number(min(scores))}</b> '
        f'<span class="bar" aria-hidden="true"></span> to the highest <b>{_number(max(scores))}</b> of this attribution</span>',
        f'<span><span class="sample top">#1</span> outlined and numbered: the top {min(k, len(scores))} texts by score</span>',
    ]
    if item.example.relevant is not None:
        parts.append('<span><span class="truth">✓</span> ground truth: a text the answer needs</span>')
    if item.example.kinds is not None:
        parts.append('<span><span class="kind">kind</span> the probe\'s label of the text</span>')
    return '<div class="legend">' + "".join(parts) + "</div>"


def _qa(item: ReportItem) -> str:
    example, result = item.example, item.result
    rows = [("question", f"<pre>{escape(result.question)}</pre>")]
    given = "given, teacher-forced" if example.answer is not None else "the model's greedy answer"
    rows.append((f"answer ({given})", f"<pre>{escape(result.answer)}</pre>"))
    if example.reference is not None:
        rows.append(("reference", f"<pre>{escape(example.reference)}</pre>"))
    if example.injected_answer is not None:
        follows = follows_injection(result.answer, example.injected_answer)
        verdict = (
            '<span class="follows">follows the injected text</span>' if follows
            else '<span class="ignores">does not follow the injected text</span>'
        )
        rows.append((
            "injection",
            f"the injected text asks for <code>{escape(example.injected_answer)}</code>; the answer gives "
            f"<code>{escape(final_value(result.answer))}</code>: {verdict}",
        ))
    return '<dl class="qa">' + "".join(f"<dt>{escape(name)}</dt><dd>{value}</dd>" for name, value in rows) + "</dl>"


def _top_table(item: ReportItem) -> str:
    example, result, k = item.example, item.result, item.k
    truth = set(example.relevant or ())
    head = ["rank", "text", "score"] + (["kind"] if example.kinds is not None else []) + (
        ["true"] if example.relevant is not None else []
    ) + ["content"]
    rows = []
    for position, (i, score, text) in enumerate(result.top(k), start=1):
        cells = [f'<td class="num">{position}</td>', f'<td class="num">{i}</td>', f'<td class="num">{_number(score)}</td>']
        if example.kinds is not None:
            cells.append(f"<td>{escape(example.kinds[i])}</td>")
        if example.relevant is not None:
            cells.append(f"<td>{'✓' if i in truth else ''}</td>")
        cells.append(f"<td>{escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"
    return f'<table class="top-k">{header}{"".join(rows)}</table>'


def _kind_table(item: ReportItem) -> str:
    kinds = item.example.kinds
    if kinds is None:
        return ""
    shares = kind_shares(item.result.scores, kinds)
    rows = []
    for kind in dict.fromkeys(kinds):
        share = shares[kind] if shares is not None else math.nan
        bar = "" if math.isnan(share) else f'<span class="share" style="width: {round(120 * share)}px"></span>'
        rows.append(
            f"<tr><td>{escape(kind)}</td><td class=\"num\">{kinds.count(kind)}</td>"
            f'<td class="num">{_number(share)}</td><td>{bar}</td></tr>'
        )
    header = "<tr><th>kind</th><th>texts</th><th>share of positive credit</th><th></th></tr>"
    return f'<div><h3>Credit by kind</h3><table class="kinds">{header}{"".join(rows)}</table></div>'


def _settings_table(item: ReportItem) -> str:
    result = item.result
    rows = [("method", result.method), *((name, _setting(value)) for name, value in result.params.items())]
    rows += [("top-k shown", str(item.k)), ("seconds", f"{result.seconds:.2f}")]
    body = "".join(f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>" for name, value in rows)
    return f'<div><h3>Method and settings</h3><table class="settings">{body}</table></div>'


def render_item(item: ReportItem, anchor: str) -> str:
    """One attribution as a ``<section>`` (see the module docstring)."""
    return (
        f'<section class="example" id="{escape(anchor)}">'
        f"<h2>{escape(item.label)}</h2>{_qa(item)}"
        f"<h3>Context ({len(item.result.contexts)} texts, in input order)</h3>{_legend(item)}{_context_spans(item)}"
        f"<h3>Top {min(item.k, len(item.result.scores))}</h3>{_top_table(item)}"
        f'<div class="columns">{_kind_table(item)}{_settings_table(item)}</div>'
        "</section>"
    )


def _scalar_table(scalars: Mapping[str, float]) -> str:
    body = "".join(
        f'<tr><th>{escape(name)}</th><td class="num">{_number(value)}</td></tr>' for name, value in scalars.items()
    )
    return f'<table class="scalars">{body}</table>'


def _document(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS % {'full': ', '.join(map(str, FULL_RGB))}}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def render_page(
    title: str,
    items: Sequence[ReportItem],
    *,
    subtitle: str = "",
    scalars: Mapping[str, float] | None = None,
    scalars_title: str = "Scalars",
    back_link: tuple[str, str] | None = None,
) -> str:
    """A whole page: the title, an optional subtitle, scalars (under ``scalars_title``) and ``(href, text)`` link back,
    a list of the attributions when there are several, then each attribution (:func:`render_item`)."""
    parts = [f"<h1>{escape(title)}</h1>"]
    if back_link is not None:
        parts.append(f'<p><a class="back" href="{escape(back_link[0])}">{escape(back_link[1])}</a></p>')
    if subtitle:
        parts.append(f'<p class="subtitle">{escape(subtitle)}</p>')
    if scalars:
        parts.append(f"<h3>{escape(scalars_title)}</h3>{_scalar_table(scalars)}")
    if len(items) > 1:
        links = "".join(
            f'<li><a href="#example-{n}">{escape(item.label)}</a>: {escape(item.result.question)}</li>'
            for n, item in enumerate(items)
        )
        parts.append(f"<nav><h3>Attributions</h3><ol>{links}</ol></nav>")
    parts += [render_item(item, f"example-{n}") for n, item in enumerate(items)]
    return _document(title, "".join(parts))


def _column_label(name: str) -> str:
    """A scalar's name as a narrow column header: without ``attribution/``, breakable after ``/`` and ``_``."""
    short = name.removeprefix("attribution/")
    return "".join(escape(ch) + ("<wbr>" if ch in "/_" else "") for ch in short)


def render_index(title: str, points: Sequence[tuple[int, str, Mapping[str, float]]]) -> str:
    """A page listing logging points ``(step, page href, scalars)`` by step, one row each, one
    column per scalar name (a blank cell where a point lacks it)."""
    names = list(dict.fromkeys(name for _, _, scalars in points for name in scalars))
    header = "<tr><th>step</th><th>page</th>" + "".join(f"<th>{_column_label(n)}</th>" for n in names) + "</tr>"
    rows = []
    for step, href, scalars in sorted(points, key=lambda point: point[0]):
        cells = "".join(
            f'<td class="num">{_number(scalars[n]) if n in scalars else ""}</td>' for n in names
        )
        rows.append(f'<tr><td class="num">{step}</td><td><a href="{escape(href)}">{escape(href)}</a></td>{cells}</tr>')
    body = (
        f"<h1>{escape(title)}</h1><p class=\"subtitle\">one row per logging point; the columns are its "
        f"<code>attribution/*</code> scalars</p><div class=\"wide\"><table class=\"index\">{header}{''.join(rows)}</table></div>"
    )
    return _document(title, body)
