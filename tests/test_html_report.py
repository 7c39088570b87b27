"""The static HTML report: escaping, its files, and the page driven in headless Chromium (sort, filter, screenshot)."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markupsafe import escape

from conftest import chromium, run_chromium
from lifebench.analysis import analyze, load_results
from lifebench.analysis.html import render_html, write_report
from lifebench.analysis.results import ResultSet

SAMPLE = Path(__file__).parent / "data" / "biobench_results_sample.json"
EVIL_MODEL = "<script>alert(1)</script>"
EVIL_TASK = "Beluga <img src=x onerror=\"document.body.setAttribute('data-xss','1')\">"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def evil_results() -> ResultSet:
    """The sample with one model and one task display name that would run script if not escaped."""
    rs = load_results([SAMPLE])
    old = "resnet18.a1_in1k"
    rs.scores = [dataclasses.replace(s, model=EVIL_MODEL) if s.model == old else s for s in rs.scores]
    model = rs.models.pop(old)
    rs.models[EVIL_MODEL] = dataclasses.replace(model, name=EVIL_MODEL, display=EVIL_MODEL, family="<b>cnn</b>")
    rs.tasks["beluga"] = EVIL_TASK
    return rs


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("report")
    a = analyze(evil_results(), n_boot=200)
    write_report(a, out)
    return out, a


class Rows(HTMLParser):
    """The leaderboard's body rows: per row, the cells' data-v values and whether the row is hidden."""

    def __init__(self) -> None:
        super().__init__()
        self.in_board = self.in_body = False
        self.rows: list[dict] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "table" and a.get("id") == "board":
            self.in_board = True
        elif self.in_board and tag == "tbody":
            self.in_body = True
        elif self.in_body and tag == "tr":
            self.rows.append({"hidden": "hidden" in a, "v": [], "search": a.get("data-search")})
        elif self.in_body and tag in ("td", "th"):
            self.rows[-1]["v"].append(a.get("data-v"))

    def handle_endtag(self, tag):
        if tag == "tbody" and self.in_body:
            self.in_body = self.in_board = False


def test_names_are_escaped(report) -> None:
    out, a = report
    page = (out / "index.html").read_text(encoding="utf-8")
    assert EVIL_MODEL not in page and "<img src=x" not in page and "<b>cnn</b>" not in page
    # shown as text, escaped the way the Jinja2 templates escape (&#34; and &#39; for quotes)
    assert escape(EVIL_MODEL) in page and escape(EVIL_TASK) in page
    parser = Rows()
    parser.feed(page)
    assert parser.scripts == 1  # only the page's own script
    assert len(parser.rows) == 22
    # the exported files carry the raw names (they are data, not markup)
    assert EVIL_MODEL in (out / "results.json").read_text(encoding="utf-8")
    # rendered without plots, the page says so and still escapes every name
    again = render_html(a, {}, plot_note="No plots here.")
    assert "No plots here." in again and EVIL_MODEL not in again and "<img" not in again


def test_report_files(report) -> None:
    out, a = report
    for name in ("reference_vs_suite", "threshold_sweep", "task_scores", "release_date", "params"):
        png, svg = out / "plots" / f"{name}.png", out / "plots" / f"{name}.svg"
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert b"<svg" in svg.read_bytes()[:2000]
        assert f"plots/{name}.svg" in (out / "index.html").read_text(encoding="utf-8")
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page  # nothing fetched from the network
    assert f"{a.vs_suite.kendall_tau_b.point:.3f}" in page and "BioBench (Stevens 2025" in page
    assert "git_commit" in page and "0000000000000000000000000000000000000000" in page  # provenance
    assert "no score on ecdysis; left out of the suite mean" in page  # exclusions listed
    assert (out / "index.html").stat().st_mode & 0o044 == 0o044


def test_report_without_matplotlib_plots(tmp_path: Path) -> None:
    a = analyze(load_results([SAMPLE]), n_boot=50)
    written = write_report(a, tmp_path, plots=False)
    assert "Plots were not drawn" in written["html"].read_text(encoding="utf-8")
    assert not (tmp_path / "plots").exists()


# A variant of the page that clicks a column heading twice and types into the filter once loaded, then writes
# what it saw into <pre id=result>; the DOM is read back with --dump-dom.
DRIVER = """
<script>
(function () {
  var t = document.getElementById("board"), ths = t.tHead.rows[0].cells, col = -1;
  for (var i = 0; i < ths.length; i++) { if (ths[i].getAttribute("title") === "beluga") { col = i; } }
  function column() { return [].map.call(t.tBodies[0].rows, function (r) { return r.cells[col].getAttribute("data-v"); }); }
  ths[col].click();
  var first = column(), firstSort = ths[col].getAttribute("aria-sort");
  ths[col].click();
  var second = column(), secondSort = ths[col].getAttribute("aria-sort");
  var f = document.getElementById("filter");
  f.value = "dinov2";
  f.dispatchEvent(new Event("input"));
  var out = document.createElement("pre");
  out.id = "result";
  out.textContent = JSON.stringify({col: col, first: first, firstSort: firstSort, second: second,
    secondSort: secondSort, shown: document.getElementById("shown").textContent,
    xss: document.body.hasAttribute("data-xss"), title: document.title});
  document.body.appendChild(out);
}());
</script>
</body>"""


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install chromium; .ci/run does it)")
def test_page_in_headless_chromium(report, tmp_path: Path) -> None:
    out, a = report
    page = (out / "index.html").read_text(encoding="utf-8")
    driven = out / "driven.html"
    driven.write_text(page.replace("</body>", DRIVER, 1), encoding="utf-8")
    done = run_chromium(["--dump-dom", driven.as_uri()], tmp_path / "profile1")
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
    assert match, done.stdout[-2000:]
    seen = json.loads(html.unescape(match.group(1)))
    assert not seen["xss"] and seen["title"].startswith("Does ImageNet-1K rank predict the suite?")

    beluga = {s.model: s.point for s in a.results.scores if s.task == "beluga"}
    expected = sorted(beluga.values(), reverse=True)
    n_missing = 22 - len(beluga)
    first = seen["first"]
    assert seen["firstSort"] == "descending" and seen["secondSort"] == "ascending"
    assert [float(v) for v in first[:len(beluga)]] == pytest.approx(expected)  # best first ...
    assert first[len(beluga):] == [""] * n_missing  # ... models without a score last
    assert [float(v) for v in seen["second"][:len(beluga)]] == pytest.approx(expected[::-1])

    dumped = Rows()
    dumped.feed(done.stdout)
    visible = [r["search"] for r in dumped.rows if not r["hidden"]]
    assert len(visible) == 3 and all("dinov2" in v for v in visible)
    assert seen["shown"] == "3 of 22 models"

    shot = tmp_path / "report.png"
    done = run_chromium(["--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}",
                          (out / "index.html").as_uri()], tmp_path / "profile2")
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 2400)
    shutil.copy(shot, out / "screenshot.png")
