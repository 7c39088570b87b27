"""A static HTML report of an analysis: one folder, no build step, no network, works from ``file://``.

``index.html`` holds the analysis numbers, a sortable and filterable leaderboard (intervals, best and tied
models marked), the plots (``plots/*.svg`` and ``.png`` beside it), the exclusions and the run provenance.
The small script and style sheet are inline. Every name that comes from the data (models, tasks, families,
provenance values) is HTML-escaped, so a model called ``<script>...`` is shown, never run.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import math
import os
from pathlib import Path
from typing import Any

from lifebench.analysis.analyze import _NAMES, PAPER, Analysis
from lifebench.analysis.stats import STATISTICS, Agreement, Interval
from lifebench.errors import ConfigError, MissingDependencyError
from lifebench.fsutil import atomic_write

__all__ = ["render_html", "write_report"]

logger = logging.getLogger(__name__)

_PROVENANCE_ROWS = 500  # records shown in the page; analysis.json has all of them


def esc(value: object) -> str:
    """Text safe inside HTML elements and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def write_report(analysis: Analysis, out_dir: str | os.PathLike[str], *, plots: bool = True) -> dict[str, Path]:
    """Write the whole report into ``out_dir``: ``index.html``, ``plots/``, ``analysis.{txt,json}`` and the
    results as ``results.{parquet,csv,json}``. Returns name -> path of what was written."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create report folder {out} ({exc.strerror}); pass a writable --out folder") from exc
    written: dict[str, Path] = {}
    written |= {f"results.{k}": v for k, v in analysis.results.write(out).items()}
    written |= {f"analysis.{k}": v for k, v in analysis.write(out).items()}
    made: dict[str, dict[str, Any]] = {}
    plot_note = "Plots were not drawn (--no-plots)."
    if plots:
        from lifebench.analysis.plots import write_plots

        try:
            made = write_plots(analysis, out / "plots")
        except MissingDependencyError as exc:
            logger.warning("%s; the report has no plots", exc)
            plot_note = f"No plots: {exc}."
    page = render_html(analysis, made, plot_note=plot_note)
    written["html"] = atomic_write(out / "index.html", lambda f: f.write(page.encode("utf-8")))
    for name, info in made.items():
        written[f"plot.{name}.png"], written[f"plot.{name}.svg"] = info["png"], info["svg"]
    for path in written.values():  # atomic writes create owner-only files; a report is for everyone to read
        path.chmod(0o644)
    return written


# ---------------------------------------------------------------------------------------------- rendering


def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _iv(iv: Interval) -> str:
    if iv.low is None:
        return _num(iv.point)
    return f"{_num(iv.point)} <span class=ci>[{_num(iv.low)}, {_num(iv.high)}]</span>"


def _agreement_row(title: str, a: Agreement | None, extra: str = "") -> str:
    if a is None:
        return ""
    cells = "".join(f"<td data-v='{_num(getattr(a, k).point, 6)}'>{_iv(getattr(a, k))}</td>" for k in STATISTICS)
    return f"<tr>{extra}<th scope=row>{esc(title)}</th><td>{a.n_models}</td>{cells}</tr>"


def _agreement_head(first: str, extra: str = "") -> str:
    stats = "".join(f"<th>{esc(_NAMES[k])}</th>" for k in STATISTICS)
    return f"<thead><tr>{extra}<th>{esc(first)}</th><th>models</th>{stats}</tr></thead>"


def _params(v: float | None) -> str:
    if v is None:
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if v >= size:
            return f"{v / size:.1f}{unit}"
    return f"{v:.0f}"


def _leaderboard(a: Analysis) -> str:
    rs = a.results
    scores = {(s.task, s.model): s for s in rs.scores}
    suite_rows = {r.model: r for r in a.leaderboard}
    tasks = list(rs.tasks)
    models = [r.model for r in a.leaderboard] + sorted(m for m in {s.model for s in rs.scores} if m not in suite_rows)
    heads = ["<th data-type=num data-first=asc>rank</th>", "<th data-type=text data-first=asc>model</th>",
             "<th data-type=text data-first=asc>family</th>", "<th data-type=num data-first=desc>params</th>",
             "<th data-type=text data-first=desc>released</th>",
             "<th data-type=num data-first=desc class=suite>suite mean</th>"]
    heads += [f"<th data-type=num data-first=desc title='{esc(t)}'>{esc(rs.tasks[t])}"
              f"{' <small>(reference)</small>' if t == a.reference else ''}</th>" for t in tasks]
    body = []
    labels = rs.labels()
    for m in models:
        info = rs.models.get(m)
        label = labels.get(m, m)
        family = (info.family if info else None) or ""
        r = suite_rows.get(m)
        if r is None:
            rank_cell, mean_cell = "<td data-v=''>–</td>", "<td data-v='' class=suite>–</td>"
        else:
            ri = f" <span class=ci>[{r.rank_low}–{r.rank_high}]</span>" if r.rank_low is not None else ""
            rank_cell = f"<td data-v='{r.rank}'>{r.rank}{ri}</td>"
            ci = f" <span class=ci>[{_num(r.low)}, {_num(r.high)}]</span>" \
                if r.low is not None else ""
            mean_cell = f"<td data-v='{r.mean:.6f}' class=suite>{_num(r.mean)}{ci}</td>"
        cells = [rank_cell,
                 f"<th scope=row data-v='{esc(label.lower())}' title='{esc(m)}'>{esc(label)}</th>",
                 f"<td data-v='{esc(family.lower())}'>{esc(family) or '–'}</td>",
                 f"<td data-v='{'' if not info or info.params is None else f'{info.params:.0f}'}'>"
                 f"{_params(info.params if info else None)}</td>",
                 f"<td data-v='{esc(info.release if info and info.release else '')}'>"
                 f"{esc(info.release if info and info.release else '–')}</td>", mean_cell]  # fmt: skip
        for t in tasks:
            s = scores.get((t, m))
            if s is None:
                cells.append("<td data-v=''>–</td>")
                continue
            cls = "best" if s.is_best else "tied" if s.tied else ""
            mark = " <span class=mark title='best on this task'>★</span>" if s.is_best else (
                " <span class=mark title='tied with the best'>≈</span>" if s.tied else "")
            ci = f" <span class=ci>[{_num(s.low)}, {_num(s.high)}]</span>" if s.low is not None else ""
            rank = a.task_ranks.get((t, m))
            tip = f"rank {rank[0]}" if rank else ""
            if rank and rank[1] is not None:
                tip += f" [{rank[1]}–{rank[2]}]"
            if s.pvalue is not None:
                tip += f"; adjusted p = {s.pvalue:.3g} (max test)"
            cells.append(f"<td data-v='{s.point:.6f}' class='{cls}' title='{esc(tip)}'>{_num(s.point)}{ci}{mark}</td>")
        search = esc(f"{label} {m} {family}".lower())
        body.append(f"<tr data-search='{search}' data-family='{esc(family)}'>{''.join(cells)}</tr>")
    families = sorted({(rs.models[m].family or "") for m in models if m in rs.models} - {""})
    options = "".join(f"<option value='{esc(f)}'>{esc(f)}</option>" for f in families)
    return (
        "<div class=controls><label>Filter models <input id=filter type=search placeholder='name or family'>"
        "</label> <label>Family <select id=family><option value=''>all</option>" + options + "</select></label> "
        f"<span id=shown aria-live=polite>{len(models)} of {len(models)} models</span></div>"
        "<div class=scroll><table id=board class=board><thead><tr>" + "".join(heads) + "</tr></thead><tbody>"
        + "".join(body) + "</tbody></table></div>"
    )


def _legend(a: Analysis) -> str:
    rs = a.results
    if rs.per_example:
        how = (f"{a.confidence * 100:g}% percentile bootstrap intervals over each task's test examples "
               f"({a.n_boot} resamples shared by all models of a task); the suite mean's interval and the rank "
               "intervals come from the joint bootstrap (each resample averages the tasks' resampled scores). "
               "★ best on the task; ≈ not significantly worse than the best (step-down paired bootstrap max "
               f"test over all pairs of models, family-wise error at most {1 - a.confidence:.2g}).")
    else:
        how = ("Imported point estimates without per-example predictions: task intervals and ties are the "
               "source's own (★ best, ≈ tied, where the source publishes them); the suite mean has no interval "
               "and ranks have no interval.")
    return f"<p class=note>{esc(how)} Click a column heading to sort; a second click reverses the order.</p>"


def _provenance(a: Analysis) -> str:
    rows = a.results.provenance
    if not rows:
        return "<p>No provenance recorded.</p>"
    more = ""
    if len(rows) > _PROVENANCE_ROWS:
        more = f"<p class=note>The first {_PROVENANCE_ROWS} of {len(rows)} records; all are in analysis.json.</p>"
        rows = rows[:_PROVENANCE_ROWS]
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]

    def show(v: object) -> str:
        if isinstance(v, dict):
            return ", ".join(f"{k} {x}" for k, x in v.items())
        if isinstance(v, list):
            return " ".join(map(str, v))
        return "" if v is None else str(v)

    head = "".join(f"<th data-type=text data-first=asc>{esc(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{esc(show(r.get(k)))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"{more}<div class=scroll><table class=prov><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _plots(made: dict[str, dict[str, Any]], note: str) -> str:
    if not made:
        return f"<p>{esc(note)}</p>"
    figs = []
    for name, info in made.items():
        figs.append(
            f"<figure id='plot-{esc(name)}'><img src='plots/{esc(name)}.svg' alt='{esc(info['title'])}' "
            f"loading=lazy><figcaption><b>{esc(info['title'])}.</b> {esc(info['caption'])} "
            f"<a href='plots/{esc(name)}.png'>PNG</a> · <a href='plots/{esc(name)}.svg'>SVG</a></figcaption></figure>"
        )
    return "".join(figs)


def render_html(analysis: Analysis, plots: dict[str, dict[str, Any]] | None = None, *,
                plot_note: str = "No plots.") -> str:
    """The report page as one string."""
    a = analysis
    rs = a.results
    ref = rs.tasks.get(a.reference, a.reference)
    agreement = (
        "<table class=stats>" + _agreement_head("against")
        + "<tbody>" + _agreement_row("suite mean", a.vs_suite)
        + "".join(_agreement_row(rs.tasks.get(t, t), ag) for t, ag in a.vs_task.items()) + "</tbody></table>"
    )
    sweep_rows = [r for r in a.sweep if r.vs_suite is not None]
    sweep = (
        "<table class=stats>" + _agreement_head("against", "<th>T</th>") + "<tbody>"
        + "".join(_agreement_row("suite mean", r.vs_suite, f"<td>{r.threshold:.2f}</td>") for r in sweep_rows)
        + "</tbody></table>" if sweep_rows else f"<p>No threshold has {a.min_models} models.</p>"
    )
    loto = (
        "<table class=stats><thead><tr><th>left out</th><th>Kendall τ-b</th><th>mis-ranked</th>"
        "<th>best model without it</th></tr></thead><tbody>"
        + "".join(f"<tr><th scope=row>{esc(rs.tasks.get(r.task, r.task))}</th><td>{_num(r.kendall_tau_b)}</td>"
                  f"<td>{_num(r.misranked)}</td><td>{esc(_label(a, r.top))}</td></tr>" for r in a.loto)
        + "</tbody></table>" if a.loto else "<p>The suite has one task.</p>"
    )
    bests = "".join(
        f"<li><b>{esc(rs.tasks.get(b['task'], b['task']))}</b>: {esc(_label(a, b['best']))} ★"
        + ("" if b["ties"] is None else ("; tied: " + ", ".join(esc(_label(a, m)) for m in b["ties"]) if b["ties"]
                                         else "; no ties"))
        + f" <small>({b['n_models']} models)</small></li>" for b in a.bests()
    )
    excluded = "".join(f"<li>{esc(e)}</li>" for e in a.excluded) or "<li>none</li>"
    generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    title = f"Does {ref} rank predict the suite?"
    return f"""<!doctype html>
<html lang=en>
<head>
<meta charset=utf-8>
<meta name=viewport content="width=device-width, initial-scale=1">
<title>{esc(title)} · lifebench</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{esc(title)}</h1>
<p class=meta>Source: {esc(rs.source)} · {esc(rs.kind)} · {len(a.suite_models)} models with every suite task ·
suite ({len(a.suite)}): {esc(", ".join(rs.tasks.get(t, t) for t in a.suite))} · generated {esc(generated)}</p>
<p class=meta id=resampled>Resampled: {esc(rs.resampled)}.</p>
<nav><a href="#agreement">agreement</a> · <a href="#sweep">threshold sweep</a> · <a href="#stability">stability</a>
· <a href="#leaderboard">leaderboard</a> · <a href="#plots">plots</a> · <a href="#excluded">excluded</a>
· <a href="#provenance">provenance</a></nav>
</header>
<main>
<section id=agreement>
<h2>Rank agreement of {esc(ref)} with the suite</h2>
<p class=note>Point estimate [{a.confidence * 100:g}% interval]: {esc(a.interval)}; {a.n_boot} resamples, seed {a.seed}.
R²: squared Pearson correlation; Spearman ρ: correlation of average ranks; Kendall τ-b: tie-corrected pair
agreement; mis-ranked: discordant / (concordant + discordant) model pairs. An interval can lie below its point
estimate (test-set noise pulls resampled correlations towards 0). Definitions:
docs/analysis.md.</p>
{agreement}
<p class=paper>For context: {esc(PAPER)}</p>
</section>
<section id=sweep>
<h2>Threshold sweep</h2>
<p class=note>Only the models whose {esc(ref)} score is at least T (at least {a.min_models} models).</p>
{sweep}
</section>
<section id=stability>
<h2>Leave-one-task-out rank stability</h2>
<p class=note>The suite-mean ranking against the ranking by the mean of the other tasks.</p>
{loto}
</section>
<section id=leaderboard>
<h2>Leaderboard</h2>
{_legend(a)}
{_leaderboard(a)}
<h3>Best model per task</h3>
<ul class=bests>{bests}</ul>
</section>
<section id=plots>
<h2>Plots</h2>
{_plots(plots or {}, plot_note)}
</section>
<section id=excluded>
<h2>Excluded</h2>
<ul>{excluded}</ul>
</section>
<section id=provenance>
<h2>Provenance</h2>
{_provenance(a)}
</section>
</main>
<footer>lifebench · files beside this page: results.parquet, results.csv, results.json, analysis.json, analysis.txt
</footer>
<script>{_JS}</script>
</body>
</html>
"""


def _label(a: Analysis, model: str) -> str:
    return a.results.labels().get(model, model)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1a1a1a;background:#fff}
header,main,footer{max-width:1400px;margin:0 auto;padding:0 16px}
header{border-bottom:1px solid #ddd;padding-bottom:8px}
h1{font-size:22px;margin:16px 0 4px}h2{font-size:18px;margin:28px 0 6px}h3{font-size:15px}
.meta,.note,.paper{color:#555;font-size:13px}.paper{font-style:italic}
nav a{color:#2166ac}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th[scope=row]{text-align:left;font-weight:500}
thead th{position:sticky;top:0;background:#f6f6f6;border-bottom:2px solid #ccc;text-align:center}
.board thead th{cursor:pointer;user-select:none}
.board thead th:hover{background:#e8eef6}
.board thead th[aria-sort=ascending]::after{content:" ▲"}
.board thead th[aria-sort=descending]::after{content:" ▼"}
.ci{color:#888;font-size:12px}
td.best{font-weight:700;background:#fde0dc}td.tied{background:#fff1e6}
td.suite{background:#eef4fa;font-weight:600}
.mark{color:#b2182b}
.scroll{overflow-x:auto;max-width:100%}
.controls{margin:8px 0;display:flex;gap:16px;align-items:center;flex-wrap:wrap}
input,select{font:inherit;padding:2px 6px}
tr[hidden]{display:none}
figure{margin:16px 0;max-width:1100px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#444}
ul.bests li{margin:2px 0}
.prov td{text-align:left;font-size:12px}
footer{color:#777;font-size:12px;margin:32px auto 16px}
"""

_JS = r"""
(function () {
  "use strict";
  var table = document.getElementById("board");
  if (!table) { return; }
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  function value(row, i, numeric) {
    var cell = row.cells[i];
    var v = cell.getAttribute("data-v");
    if (v === null) { v = cell.textContent; }
    if (numeric) { return v === "" ? NaN : parseFloat(v); }
    return v.toLowerCase();
  }
  function sortBy(i) {
    var th = heads[i];
    var numeric = th.getAttribute("data-type") === "num";
    var current = th.getAttribute("aria-sort");
    var first = th.getAttribute("data-first") === "desc" ? "descending" : "ascending";
    var dir = current ? (current === "ascending" ? "descending" : "ascending") : first;
    var sign = dir === "ascending" ? 1 : -1;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, i, numeric), y = value(b, i, numeric);
      var xm = numeric ? isNaN(x) : x === "", ym = numeric ? isNaN(y) : y === "";
      if (xm || ym) { return xm === ym ? 0 : (xm ? 1 : -1); }  // missing values last either way
      return x < y ? -sign : (x > y ? sign : 0);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (var k = 0; k < heads.length; k++) { heads[k].removeAttribute("aria-sort"); }
    th.setAttribute("aria-sort", dir);
    table.setAttribute("data-sorted", i + ":" + dir);
  }
  Array.prototype.forEach.call(heads, function (th, i) {
    th.tabIndex = 0;
    th.addEventListener("click", function () { sortBy(i); });
    th.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(i); }
    });
  });
  var filter = document.getElementById("filter");
  var family = document.getElementById("family");
  var shown = document.getElementById("shown");
  function applyFilter() {
    var q = filter.value.trim().toLowerCase();
    var fam = family.value;
    var n = 0;
    Array.prototype.forEach.call(body.rows, function (r) {
      var ok = (!q || r.getAttribute("data-search").indexOf(q) >= 0) &&
               (!fam || r.getAttribute("data-family") === fam);
      r.hidden = !ok;
      if (ok) { n++; }
    });
    shown.textContent = n + " of " + body.rows.length + " models";
  }
  filter.addEventListener("input", applyFilter);
  family.addEventListener("change", applyFilter);
}());
"""
