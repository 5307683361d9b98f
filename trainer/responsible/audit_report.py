"""The audit's outputs (``python -m trainer.task audit``, trainer/responsible/audit_lib.py): the report
dict written as ``audit.json``, PNG plots and a self-contained ``report.html`` (the PNGs
inlined as data URIs, every data string escaped), all into ``<model_dir>/audit/`` at once,
and the text summary the command prints."""

from __future__ import annotations

import base64
import html
import os

import numpy as np
import tensorflow as tf

from trainer.io import atomic_directory, write_json


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write(model_dir: str, report: dict) -> None:
    """Writes ``<model_dir>/audit/`` (replacing an earlier audit only once complete)."""
    from trainer.evaluation.run_reports import new_figure, save_png  # matplotlib on use
    with atomic_directory(os.path.join(model_dir, "audit")) as tmp:
        write_json(os.path.join(tmp, "audit.json"), _json_ready(report))
        pngs = {}
        for name, draw in (("exposure", _plot_exposure), ("popularity", _plot_popularity),
                           ("user_groups", _plot_user_groups), ("sweep", _plot_sweep)):
            figure = new_figure(figsize=(8, 4))
            if draw(figure, report):
                pngs[name] = save_png(figure, os.path.join(tmp, f"{name}.png"))
        with tf.io.gfile.GFile(os.path.join(tmp, "report.html"), "w") as f:
            f.write(render_html(report, pngs))


def _plot_exposure(figure, report) -> bool:
    axis = figure.add_subplot()
    names = report["groups"]
    width = 0.8 / (len(report["scorers"]) + 1)
    first = next(iter(report["scorers"].values()))["exposure"]["groups"]
    x = np.arange(len(names))
    axis.bar(x, [first[n]["merit_share"] for n in names], width, label="merit", color="#999")
    for i, (scorer, result) in enumerate(report["scorers"].items()):
        groups = result["exposure"]["groups"]
        axis.bar(x + (i + 1) * width, [groups[n]["exposure_share"] for n in names], width,
                 label=f"{scorer} exposure")
    axis.set_xticks(x + width * len(report["scorers"]) / 2, names, rotation=30, ha="right")
    axis.set_ylabel("share")
    axis.set_title(f"Exposure (top {report['k']}, 1/log2(1+rank)) against merit "
                   f"({report['merit']})")
    axis.legend(fontsize=8)
    return True


def _plot_popularity(figure, report) -> bool:
    keys = ("aplt", "coverage", "gini")
    axis = figure.add_subplot()
    width = 0.8 / len(report["scorers"])
    for i, (scorer, result) in enumerate(report["scorers"].items()):
        axis.bar(np.arange(len(keys)) + i * width,
                 [result["popularity"][key] for key in keys], width, label=scorer)
    axis.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, ["APLT", "coverage", "Gini"])
    axis.set_title(f"Popularity bias of the top {report['k']}")
    axis.legend(fontsize=8)
    return True


def _plot_sweep(figure, report) -> bool:
    if "sweep" not in report:
        return False
    points = report["sweep"]["points"]
    key = f"ndcg@{report['k']}"
    axis = figure.add_subplot()
    axis.plot([p["aplt"] for p in points], [p[key] for p in points], "o-")
    for point in points:
        axis.annotate(f"{point['weight']:g}", (point["aplt"], point[key]), fontsize=8,
                      textcoords="offset points", xytext=(4, 4))
    axis.set_xlabel(f"APLT (long-tail share of the top {report['k']})")
    axis.set_ylabel(key)
    axis.set_title(f"Popularity-penalised reranking of {report['sweep']['scorer']} "
                   "(labels: weight)")
    return True


def _group_metric(report) -> str:
    return "auc" if report["mode"] == "impressions" else f"ndcg@{report['k']}"


def _plot_user_groups(figure, report) -> bool:
    metric = _group_metric(report)
    entries = [(scorer, result["user_groups"].get("activity"))
               for scorer, result in report["scorers"].items()]
    entries = [(s, e) for s, e in entries if e]
    if not entries:
        return False
    axis = figure.add_subplot()
    names = list(entries[0][1]["groups"])
    width = 0.8 / len(entries)
    for i, (scorer, entry) in enumerate(entries):
        values = [entry["groups"][n][metric] for n in names]
        low = [entry["groups"][n]["intervals"].get(metric, (np.nan, np.nan))[0] for n in names]
        high = [entry["groups"][n]["intervals"].get(metric, (np.nan, np.nan))[1] for n in names]
        error = np.nan_to_num(np.abs(np.array([np.subtract(values, low),
                                               np.subtract(high, values)])))
        axis.bar(np.arange(len(names)) + i * width, values, width, yerr=error, capsize=3,
                 label=scorer)
    axis.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=15)
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} by user activity (training clicks), 95% bootstrap intervals")
    axis.legend(fontsize=8)
    return True


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _interval(pair) -> str:
    if not pair or any(v is None or not np.isfinite(v) for v in pair):
        return ""
    return f' <span class="ci">[{pair[0]:.3f}, {pair[1]:.3f}]</span>'


def render_html(report: dict, pngs: dict) -> str:
    """The audit as one self-contained page (the PNGs inlined as data URIs)."""
    e = html.escape
    scorers = report["scorers"]
    parts = [f"<h1>Audit of {e(str(report['model_dir']))}</h1>",
             f"<p class=meta>{report['split']} split: {report['impressions']} impressions, "
             f"{report['rows']} candidates; top k = {report['k']}; merit from "
             f"{e(report['merit'])}; item groups by {e(report['item_group'])}; long tail = "
             f"{report['long_tail_items']} of {report['catalogue_items']} items; "
             f"{report['bootstrap']} bootstrap resamples.</p>",
             (f"<p class=note>{e(report['note'])}</p>" if "note" in report else ""),
             "<h2>Popularity bias</h2><table><tr><th>scorer</th><th>ARP</th><th>APLT</th>"
             "<th>coverage</th><th>Gini</th><th>popularity lift</th></tr>"]
    for name, result in scorers.items():
        pop = result["popularity"]
        parts.append(
            f"<tr><td>{e(name)}</td><td>{_fmt(pop['arp'], 1)}{_interval(pop['intervals']['arp'])}"
            f"</td><td>{_fmt(pop['aplt'])}{_interval(pop['intervals']['aplt'])}</td>"
            f"<td>{_fmt(pop['coverage'])}</td><td>{_fmt(pop['gini'])}</td>"
            f"<td>{_fmt(pop.get('popularity_lift'))}</td></tr>")
    parts.append("</table><h2>Exposure against merit</h2><p class=note>disparity = exposure "
                 "share / merit share - 1 (0: exposure in proportion to merit).</p>"
                 "<table><tr><th>group</th><th>merit share</th>" +
                 "".join(f"<th>{e(n)} exposure</th><th>{e(n)} disparity</th>" for n in scorers)
                 + "</tr>")
    first = next(iter(scorers.values()))
    for group in report["groups"]:
        cells = "".join(
            f"<td>{_fmt(r['exposure']['groups'][group]['exposure_share'])}</td>"
            f"<td>{_fmt(r['exposure']['groups'][group]['disparity'])}"
            f"{_interval(r['exposure']['groups'][group]['disparity_interval'])}</td>"
            for r in scorers.values())
        parts.append(f"<tr><td>{e(group)}</td>"
                     f"<td>{_fmt(first['exposure']['groups'][group]['merit_share'])}</td>"
                     f"{cells}</tr>")
    parts.append("<tr><td>total variation</td><td></td>" + "".join(
        f"<td colspan=2>{_fmt(r['exposure']['total_variation'])}"
        f"{_interval(r['exposure']['total_variation_interval'])}</td>"
        for r in scorers.values()) + "</tr></table>")
    if "data_log_odds_skew" in report:
        parts.append("<h2>Log-odds skew over true relevance</h2><p class=note>How many "
                     "log-odds a group's logged clicks (data) sit above what relevance "
                     "explains, and a scorer's click probabilities less the median group's "
                     "(its overall calibration offset cancels); 0 = no skew. Intervals are "
                     "simultaneous over the groups.</p><table><tr><th>group</th>"
                     "<th>data</th>" + "".join(f"<th>{e(n)} (relative)</th>" for n in scorers)
                     + "</tr>")
        for group in report["groups"]:
            data = report["data_log_odds_skew"][group]
            parts.append(f"<tr><td>{e(group)}</td><td>{_fmt(data['value'])}"
                         f"{_interval(data['interval'])}</td>" + "".join(
                             f"<td>{_fmt(r['log_odds_skew'][group]['relative'])}"
                             f"{_interval(r['log_odds_skew'][group]['relative_interval'])}</td>"
                             for r in scorers.values()) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>User groups</h2>")
    for name, result in scorers.items():
        for grouping, entry in result["user_groups"].items():
            metric_names = [m for m in next(iter(entry["groups"].values()))
                            if m not in ("rows", "impressions", "users", "intervals")]
            unit = "impressions" if report["mode"] == "impressions" else "users"
            parts.append(f"<h3>{e(name)} by {e(grouping)}</h3><table><tr><th>group</th>"
                         f"<th>{unit}</th>" + "".join(f"<th>{e(m)}</th>" for m in metric_names)
                         + "</tr>")
            for group, values in entry["groups"].items():
                parts.append(f"<tr><td>{e(group)}</td><td>{values[unit]}</td>" + "".join(
                    f"<td>{_fmt(values[m])}{_interval(values['intervals'].get(m))}</td>"
                    for m in metric_names) + "</tr>")
            parts.append("<tr><td>gap (max - min)</td><td></td>" + "".join(
                f"<td>{_fmt(entry['gaps'].get(m))}</td>" for m in metric_names) + "</tr></table>")
    if "sweep" in report:
        key = f"ndcg@{report['k']}"
        parts.append(f"<h2>Exposure-aware reranking of {e(report['sweep']['scorer'])}</h2>"
                     "<p class=note>Each list's top k by (1 - w) z(score) - w z(log(1 + "
                     "clicks)) over its candidates; changes relative to w = 0.</p><table><tr>"
                     f"<th>w</th><th>{key}</th><th>change</th><th>APLT</th><th>change</th>"
                     "<th>coverage</th><th>Gini</th><th>total variation</th></tr>")
        for p in report["sweep"]["points"]:
            parts.append(f"<tr><td>{p['weight']:g}</td><td>{_fmt(p[key])}</td>"
                         f"<td>{_fmt(100 * p['ndcg_change'], 1)}%"
                         f"{_interval([100 * v for v in p['ndcg_change_interval']])}</td>"
                         f"<td>{_fmt(p['aplt'])}</td><td>{_fmt(100 * p['aplt_change'], 1)}%"
                         f"{_interval([100 * v for v in p['aplt_change_interval']])}</td>"
                         f"<td>{_fmt(p['coverage'])}"
                         f"</td><td>{_fmt(p['gini'])}</td><td>{_fmt(p['total_variation'])}"
                         "</td></tr>")
        parts.append("</table>")
    for name, path in pngs.items():
        with tf.io.gfile.GFile(path, "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        parts.append(f'<h2>{e(name.replace("_", " "))}</h2>'
                     f'<img alt="{e(name)}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right}th:first-child,td:first-child{text-align:left}"
             ".ci{color:#777;font-size:.85em}.note,.meta{color:#555}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Audit</title><style>{style}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def summary_table(report: dict) -> str:
    """A fixed-width text table of the headline measures per scorer (and the sweep)."""
    metric = _group_metric(report)
    ndcg = f"ndcg@{report['k']}"
    lines = [f"{'scorer':<16}{ndcg:>9}{'ARP':>9}{'APLT':>8}{'cover':>8}{'Gini':>8}{'TV':>8}"
             f"  {metric} gap (activity)"]
    for name, result in report["scorers"].items():
        pop = result["popularity"]
        gap = result["user_groups"].get("activity", {}).get("gaps", {}).get(metric)
        value = result.get("ndcg", {}).get("value", float("nan"))
        lines.append(f"{name:<16}{value:>9.4f}{pop['arp']:>9.1f}{pop['aplt']:>8.3f}"
                     f"{pop['coverage']:>8.3f}{pop['gini']:>8.3f}"
                     f"{result['exposure']['total_variation']:>8.3f}"
                     f"  {(gap if gap is not None else float('nan')):.3f}")
    if "note" in report:
        lines.append(f"\nnote: {report['note']}")
    if "sweep" in report:
        lines.append(f"\nreranking {report['sweep']['scorer']}: weight, {ndcg} (change), "
                     "APLT (change)")
        for p in report["sweep"]["points"]:
            low, high = p["ndcg_change_interval"]
            lines.append(f"  {p['weight']:<5g} {p[ndcg]:.4f} ({100 * p['ndcg_change']:+.1f}%, "
                         f"95% [{100 * low:+.1f}, {100 * high:+.1f}])  {p['aplt']:.3f} "
                         f"({100 * p['aplt_change']:+.1f}%)")
    return "\n".join(lines)
