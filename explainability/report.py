"""Render explanation records and faithfulness metrics as one self-contained HTML page.

The page works offline and without JavaScript: styling is inline CSS, charts are inline SVG
and exact values live in title="" tooltips. Every piece of data text goes through html.escape,
because item titles and words come from catalogue text that may contain markup.
"""

import html
import math

__all__ = ["render_report"]

_PREFERRED = ["comprehensiveness", "sufficiency", "aopc", "deletion_auc", "insertion_auc",
              "completeness_error", "truth_precision@5", "truth_recall@5", "seconds_per_example"]
_POS, _NEG = (214, 39, 40), (31, 119, 180)  # red pushes the score up, blue pushes it down

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em;color:#222}
body{max-width:1100px}table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child{text-align:left}
.ci{color:#777;font-size:.85em}.note{color:#555;font-size:.9em}.meta{color:#555}
.example{border-top:2px solid #ddd;margin-top:2em;padding-top:.5em}
.hm{margin:.3em 0;line-height:1.9}
.m{display:inline-block;width:13em;font-family:monospace;color:#444}
.w{padding:1px 3px;border-radius:3px}.tok-truth{text-decoration:underline 2px}
.sep{color:#999;font-weight:bold}
.sw{display:inline-block;width:1em;height:1em;vertical-align:middle}
svg text{font-size:12px}svg .reason{font-weight:bold}svg .mname{fill:#666;font-family:monospace}
"""


def _e(text):
    return html.escape(str(text), quote=True)


def _num(value):
    """value as a finite float, or None (None, NaN, inf and non-numbers all become None)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value):
    """HTML-safe text for one value: ints as-is, floats to 3 decimals, missing/NaN as n/a."""
    if isinstance(value, str):
        return _e(value)
    number = _num(value)
    if number is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{number:.3f}" if number == 0 or 1e-3 <= abs(number) < 1e4 else f"{number:.3g}"


def _direction(key):
    if key.startswith("truth_") or key in ("comprehensiveness", "aopc", "insertion_auc"):
        return "higher"
    if key.startswith("seconds") or key in ("sufficiency", "deletion_auc", "completeness_error"):
        return "lower"
    return None


def _metric_table(caption, methods):
    """One row per method; columns are the union of scalar metric keys, CIs folded in."""
    methods = {name: m for name, m in (methods or {}).items() if isinstance(m, dict)}
    # Lists/dicts (e.g. per-bin curves) do not fit in a cell, so they get no column.
    keys = {k for m in methods.values() for k, v in m.items()
            if not k.endswith("_ci") and not isinstance(v, (list, dict))}
    if not keys:
        return ""
    cols = [k for k in _PREFERRED if k in keys] + sorted(keys - set(_PREFERRED))
    arrow = {"higher": " &uarr;", "lower": " &darr;"}
    head = "".join(f"<th>{_e(k)}{arrow.get(_direction(k), '')}</th>" for k in cols)
    rows = []
    for name, m in methods.items():
        cells = []
        for k in cols:
            cell = _fmt(m.get(k))
            ci = m.get(f"{k}_ci")
            if isinstance(ci, (list, tuple)) and len(ci) == 2:
                cell += f' <span class="ci">[{_fmt(ci[0])}, {_fmt(ci[1])}]</span>'
            cells.append(f"<td>{cell}</td>")
        rows.append(f"<tr><th>{_e(name)}</th>{''.join(cells)}</tr>")
    notes = [f"{d} is better: {', '.join(_e(k) for k in cols if _direction(k) == d)}"
             for d in ("higher", "lower") if any(_direction(k) == d for k in cols)]
    return (f"<h3>{_e(caption)}</h3><table><thead><tr><th>method</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
            f"<p class=\"note\">{'; '.join(notes) or 'no known direction'}. "
            "Brackets are confidence intervals.</p>")


def _color(a, scale):
    if a is None or scale <= 0:
        return "transparent"
    r, g, b = _POS if a > 0 else _NEG
    return f"rgba({r},{g},{b},{min(abs(a) / scale, 1.0):.2f})"


def _heatmap(record):
    """One row of coloured words per token-attribution method."""
    words = record.get("words") or []
    attributions = {m: v for m, v in (record.get("token_attributions") or {}).items() if v}
    if not words or not attributions:
        return ""
    reasons = {str(t).lower() for t in (record.get("truth") or {}).get("reason_tokens") or []}
    rows = []
    for method, raw in attributions.items():
        values = [_num(v) for v in raw]
        # Intensity is relative within (method, example): methods have incomparable scales.
        scale = max((abs(v) for v in values if v is not None), default=0.0)
        pieces, previous = [], None
        for i, word in enumerate(words):
            where = (word.get("segment"), word.get("part"))
            if previous is not None and where != previous:
                marker = "[SEP]" if where[0] != previous[0] else ";"
                pieces.append(f'<span class="sep">{marker}</span>')
            previous = where
            a = values[i] if i < len(values) else None
            text = str(word.get("text", ""))
            cls = "w tok-truth" if text.lower() in reasons else "w"
            pieces.append(f'<span class="{cls}" style="background:{_color(a, scale)}" '
                          f'title="{_e(method)}: {_fmt(a)}">{_e(text)}</span>')
        rows.append(f'<div class="hm"><span class="m">{_e(method)}</span>{" ".join(pieces)}</div>')
    return "<h4>Token attributions</h4>" + "".join(rows)


def _history_chart(record):
    """Horizontal SVG bars: one group per history item, one bar per method, shared scale."""
    history = record.get("history") or []
    attributions = {m: v for m, v in (record.get("history_attributions") or {}).items() if v}
    if not history or not attributions:
        return ""
    reasons = {str(i) for i in (record.get("truth") or {}).get("reason_history") or []}
    values = {m: [_num(v) for v in raw] for m, raw in attributions.items()}
    # One scale for all methods: history attributions are all score differences.
    finite = [abs(v) for vs in values.values() for v in vs if v is not None]
    scale = max(finite, default=0.0) or 1.0
    row, label_w, method_w, half, gap = 16, 300, 130, 150, 8
    zero = label_w + method_w + half
    out, y = [], 0
    for i, item in enumerate(history):
        item_id = str(item.get("item_id", ""))
        title = str(item.get("title") or item_id)
        reason = item_id in reasons
        short = title if len(title) <= 42 else title[:41] + "\u2026"
        label = ("\u2605 " if reason else "") + short
        cls = ' class="reason"' if reason else ""
        out.append(f'<text x="0" y="{y + row - 4}"{cls}>'
                   f"<title>{_e(item_id)}: {_e(title)}</title>{_e(label)}</text>")
        for method in values:
            v = values[method][i] if i < len(values[method]) else None
            out.append(f'<text x="{label_w}" y="{y + row - 4}" class="mname">{_e(method)}</text>')
            if v is not None:
                width = abs(v) / scale * half
                r, g, b = _POS if v >= 0 else _NEG
                out.append(f'<rect x="{zero if v >= 0 else zero - width:.1f}" y="{y + 2}" '
                           f'width="{width:.1f}" height="{row - 4}" fill="rgb({r},{g},{b})">'
                           f"<title>{_e(method)}: {_fmt(v)}</title></rect>")
            out.append(f'<text x="{zero + half + 6}" y="{y + row - 4}">{_fmt(v)}</text>')
            y += row
        y += gap
    out.append(f'<line x1="{zero}" y1="0" x2="{zero}" y2="{y}" stroke="#888" stroke-width="1"/>')
    note = ""
    if record.get("shapley_permutations") is not None:
        note = (f'<p class="note">Shapley values from {_fmt(record["shapley_permutations"])} '
                "permutations.</p>")
    return ("<h4>History contributions</h4>"
            f'<svg width="{zero + half + 70}" height="{y}" '
            f'role="img">{"".join(out)}</svg>{note}')


def _counterfactual(cf):
    if not cf:
        return ""
    criterion = _e(cf.get("criterion", "changes its ranking"))
    if not cf.get("found"):
        return (f'<p class="cf"><b>Counterfactual:</b> none found; no removal of history items '
                f"(tried {_fmt(cf.get('tried'))}) satisfied &ldquo;{criterion}&rdquo;.</p>")
    ids = cf.get("removed") or []
    titles = cf.get("removed_titles") or ids
    removed = ", ".join(f"&lsquo;{_e(t)}&rsquo;" for t in titles) or "nothing"
    verified = "verified by re-scoring" if cf.get("verified") else "not verified by re-scoring"
    return (f'<p class="cf"><b>Counterfactual:</b> without {removed} in the history, the score '
            f"goes from {_fmt(cf.get('score_before'))} to {_fmt(cf.get('score_after'))} and the "
            "rank from "
            f"{_fmt(cf.get('rank_before'))} to {_fmt(cf.get('rank_after'))}, so the item "
            f"{criterion} ({verified}).</p>")


def _example(record, number):
    ex = record.get("example") or {}
    parts = [f'<section class="example"><h2>Example {number}: candidate '
             f'{_e(ex.get("candidate_id", "n/a"))}</h2>',
             f'<p class="meta">user {_e(ex.get("user_id", "n/a"))} &middot; impression '
             f'{_e(ex.get("impression_id", "n/a"))} &middot; label {_fmt(ex.get("label"))} '
             "&middot; "
             f'score {_fmt(record.get("score"))} &middot; rank {_fmt(record.get("rank"))} of '
             f'{_fmt(record.get("impression_size"))}</p>']
    if record.get("sentence"):
        parts.append(f'<p class="sentence">{_e(record["sentence"])}</p>')
    parts += [_heatmap(record), _history_chart(record),
              _counterfactual(record.get("counterfactual"))]
    for method, c in (record.get("completeness") or {}).items():
        c = c if isinstance(c, dict) else {}
        note = (f'{_e(method)} completeness: attribution sum '
                f'{_fmt(c.get("attribution_sum"))}, score difference '
                f'{_fmt(c.get("score_difference"))}, relative error '
                f'{_fmt(c.get("relative_error"))}')
        if "absolute_error" in c:
            note += f', absolute error {_fmt(c.get("absolute_error"))}'
        if "steps" in c:
            note += f', {_fmt(c.get("steps"))} steps'
        if c.get("converged") is False:  # said out loud: the error is above the tolerance
            note += f' (not converged under {_fmt(c.get("tolerance"))})'
        parts.append(f'<p class="note">{note}.</p>')
    return "".join(parts) + "</section>"


def render_report(records: list[dict], faithfulness: dict, title: str = "Explanations") -> str:
    """One self-contained HTML page (inline CSS and inline SVG only; no external scripts, fonts
    or images; no JavaScript needed) showing the faithfulness tables and every explained example.

    records: one dict per explained example (words, token/history attributions, counterfactual,
      sentence, optional truth); any optional part may be missing and is then left out.
    faithfulness: the content of faithfulness.json ("methods" and "history_methods" tables).
    Returns the page as a string; write it with encoding="utf-8".
    """
    f = faithfulness or {}
    bins = ", ".join(_fmt(b) for b in f.get("bins") or []) or "n/a"
    legend = (f'<p class="note"><span class="sw" style="background:rgb{_POS}"></span> raises the '
              f'score, <span class="sw" style="background:rgb{_NEG}"></span> lowers it; colour '
              "intensity is |attribution| / max |attribution| within one method and example "
              '(hover for values). <span class="tok-truth">Underlined</span> words and &#9733; '
              "history items are the true reasons (synthetic data only). <b>[SEP]</b> separates "
              "the user text from the candidate item; <b>;</b> separates the query and the "
              "history items (newest first).</p>")
    body = "".join(_example(r, i + 1) for i, r in enumerate(records or []))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1>"
            f"<p>{_fmt(f.get('num_examples'))} examples; explained quantity: "
            f"{_e(f.get('explained_quantity', 'n/a'))}; deletion/insertion fractions: {bins}.</p>"
            f"{legend}{_metric_table('Token attribution methods', f.get('methods'))}"
            f"{_metric_table('History attribution methods', f.get('history_methods'))}"
            f"{body or '<p>No examples.</p>'}</body></html>\n")
