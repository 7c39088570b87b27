"""The results page (``lifebench report --html DIR``, and ``run`` beside its leaderboard): its numbers against
scikit-learn on the stored predictions, its thumbnails, its escaping, and the page driven in headless Chromium."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix, f1_score

from conftest import chromium, run_chromium
from lifebench.cli import main
from lifebench.report import build_leaderboard
from lifebench.store import Store

EVIL = "<script>alert(1)</script>"
COLOURS = {"ant": (200, 30, 30), "bee": (30, 200, 30), EVIL: (120, 120, 40)}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _manifest(root: Path) -> Path:
    """42 noisy images in 3 classes, one of them named like a script (a folder name cannot hold '/', so the
    label comes from a manifest); faint colours so that the probes make mistakes."""
    rng = np.random.default_rng(0)
    rows = []
    for k, (label, colour) in enumerate(COLOURS.items()):
        for i in range(14):
            arr = (rng.integers(0, 256, (32, 40, 3)) * 0.93 + np.asarray(colour) * 0.07).astype(np.uint8)
            path = root / "img" / f"c{k}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
            rows.append((path.relative_to(root).as_posix(), label))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A store with pixels under two protocols on the full task and two ``--n-train`` sizes; ``report --html``."""
    root = tmp_path_factory.mktemp("results_page")
    manifest, store = _manifest(root / "data"), root / "results" / "results.sqlite"
    common = ["-q", "run", "--task", str(manifest), "--model", "pixels", "--protocol", "logreg", "--protocol", "knn",
              "--workers", "0", "--test-size", "0.5", "--store", str(store)]
    assert main([*common, "--n-train", "6", "--n-train", "12"]) == 0
    assert main(common) == 0
    assert (store.parent / "index.html").is_file()  # run writes the page beside its leaderboard
    out = root / "page"
    assert main(["-q", "report", "--store", str(store), "--html", str(out)]) == 0
    return store, out


class Page(HTMLParser):
    """Tables (by id/class/data attributes, cells' data-v and text), gallery figures and script tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.figures: list[dict] = []
        self.scripts = 0
        self.svgs: list[dict] = []
        self._table = self._row = self._cell = self._details = self._figure = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        elif tag == "table":
            self._table = {"attrs": a, "head": [], "rows": []}
            self.tables.append(self._table)
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table["rows"].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"v": a.get("data-v"), "title": a.get("title"), "text": ""}
            self._row.append(self._cell)
        elif tag == "details":
            self._details = a
        elif tag == "figure":
            self._figure = {"id": a.get("title"), "img": None, **{k: self._details.get(k) for k in
                                                                 ("data-task", "data-model")}}
            self.figures.append(self._figure)
        elif tag == "img" and self._figure is not None:
            self._figure["img"] = a.get("src")
        elif tag == "svg" and "curve" in a.get("class", ""):
            self.svgs.append({"label": a.get("aria-label"), "lines": 0})
        elif tag == "polyline" and self.svgs:
            self.svgs[-1]["lines"] += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = self._row = None
        elif tag in ("td", "th"):
            self._cell = None
        elif tag == "figure":
            self._figure = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


def _parse(out: Path) -> Page:
    page = Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    return page


def _stored(store: Path, task: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """``backbone/protocol`` -> (ids, y_true, y_pred, score) of the task's stored experiments."""
    with Store(store, create=False) as s:
        return {f"{e.backbone}/{e.protocol}": (p.ids, p.y_true, p.y_pred, p.score)
                for e in s.experiments(task=task) for p in [s.predictions(e.id, topk=False)]}


def test_per_class_f1_and_confusion_match_sklearn(site) -> None:
    store, out = site
    page = _parse(out)
    preds = _stored(store, "manifest")
    assert set(preds) == {"pixels/logreg", "pixels/knn"}
    labels = sorted(COLOURS)
    per_class = next(t for t in page.tables if t["attrs"].get("data-task") == "manifest")
    header = [c["text"] for c in per_class["rows"][0]]
    assert header == ["class", "n", "pixels (logreg)", "pixels (knn)"]  # the best model first
    shown = {r[0]["v"]: r for r in per_class["rows"][1:]}
    assert sorted(shown) == labels  # the script-like class is one plain row
    for k, model in enumerate(["pixels/logreg", "pixels/knn"]):
        _, y_true, y_pred, _ = preds[model]
        expected = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
        got = [float(shown[c][2 + k]["v"]) for c in labels]
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        assert all(int(shown[c][1]["v"]) == int((y_true == c).sum()) for c in labels)
        # the confusion matrix of each model, rows true and columns predicted, in sorted label order
        (cm,) = [t for t in page.tables if t["attrs"].get("class") == "cm"
                 and (t["attrs"].get("data-task"), t["attrs"].get("data-model")) == ("manifest", model)]
        assert [c["text"] for c in cm["rows"][0][1:]] == labels
        counts = [[int(c["v"]) for c in row[1:]] for row in cm["rows"][1:]]
        np.testing.assert_array_equal(counts, confusion_matrix(y_true, y_pred, labels=labels))
    # the best model's matrix is the one shown without script; the others are hidden
    board = build_leaderboard(store, tasks=["manifest"], per_class=True)
    best = next(f"{c.backbone}/{c.protocol}" for c in board.cells if c.is_best)
    cms = [t for t in page.tables if t["attrs"].get("class") == "cm"]
    visible = [t["attrs"]["data-model"] for t in cms if "hidden" not in t["attrs"]]
    assert best in visible and len(visible) == 3  # one per task column: manifest, manifest@n6, manifest@n12
    # the leaderboard's cells are the leaderboard's numbers
    lead = next(t for t in page.tables if t["attrs"].get("id") == "board")
    col = [c["title"] for c in lead["rows"][0]].index("manifest")
    points = {r[0]["v"]: float(r[col]["v"]) for r in lead["rows"][1:]}
    assert points == pytest.approx({board.label(c.backbone, c.protocol): c.point for c in board.cells}, rel=1e-5)


def test_escaping_and_sample_efficiency(site) -> None:
    _, out = site
    text = (out / "index.html").read_text(encoding="utf-8")
    assert EVIL not in text and html.escape(EVIL, quote=False) in text
    page = _parse(out)
    assert page.scripts == 1  # only the page's own sorting/filter script
    (curve,) = page.svgs
    assert curve["label"] == "manifest sample efficiency" and curve["lines"] == 2  # one line per model


def test_error_gallery_thumbnails(site) -> None:
    store, out = site
    page = _parse(out)
    for model, label in (("pixels/logreg", "pixels (logreg)"), ("pixels/knn", "pixels (knn)")):
        ids, y_true, y_pred, score = _stored(store, "manifest")[model]
        wrong = y_true != y_pred
        assert 0 < wrong.sum() <= 50
        figures = [f for f in page.figures if f["data-task"] == "manifest" and f["data-model"] == label]
        assert sorted(f["id"] for f in figures) == sorted(ids[wrong].tolist())
        shown = [score[ids.tolist().index(f["id"])] for f in figures]
        assert shown == sorted(shown, reverse=True)  # the most confident mistakes first
        for f in figures:
            thumb = out / f["img"]
            with Image.open(thumb) as im:
                assert im.format == "JPEG" and max(im.size) <= 160
    assert len({f["img"] for f in page.figures}) == len(list((out / "thumbs").iterdir()))


def test_missing_image_shows_the_id(site, tmp_path: Path) -> None:
    store, _ = site
    moved = tmp_path / "moved.sqlite"
    shutil.copy(store, moved)
    for image in (store.parent.parent / "data" / "img").glob("c0_*.png"):
        image.rename(image.with_suffix(".gone"))
    try:
        out = tmp_path / "page"
        assert main(["-q", "report", "--store", str(moved), "--task", "manifest", "--html", str(out)]) == 0
        page = _parse(out)
        gone = [f for f in page.figures if f["id"].startswith("img/c0_")]
        assert gone and all(f["img"] is None for f in gone)
        assert any(f["img"] for f in page.figures if not f["id"].startswith("img/c0_"))
    finally:
        for image in (store.parent.parent / "data" / "img").glob("c0_*.gone"):
            image.rename(image.with_suffix(".png"))


# Counts alert() calls from the first script on; an escaped class name never calls it.
SPY = "<head><script>window.__alerts = 0; window.alert = function () { window.__alerts += 1; };</script>"
# Once the images have loaded: sort the first task column twice, filter the models, switch the confusion matrix,
# and measure the first gallery image; what it saw goes into <pre id=result>, read back with --dump-dom.
DRIVER = """
<script>
window.addEventListener("load", function () {
  var t = document.getElementById("board"), ths = t.tHead.rows[0].cells, col = -1;
  for (var i = 0; i < ths.length; i++) { if (ths[i].getAttribute("title") === "manifest") { col = i; } }
  function column() { return [].map.call(t.tBodies[0].rows, function (r) { return r.cells[col].getAttribute("data-v"); }); }
  ths[col].click();
  var first = column(), firstSort = ths[col].getAttribute("aria-sort");
  ths[col].click();
  var second = column(), secondSort = ths[col].getAttribute("aria-sort");
  var f = document.getElementById("filter");
  f.value = "KNN";
  f.dispatchEvent(new Event("input"));
  var visible = [].filter.call(t.tBodies[0].rows, function (r) { return !r.hidden; }).map(function (r) { return r.cells[0].textContent; });
  var sel = document.querySelector("select.cm-select");
  sel.value = "1";
  sel.dispatchEvent(new Event("change"));
  var cms = [].filter.call(document.querySelectorAll("table.cm"), function (c) { return !c.hidden; }).map(function (c) { return c.getAttribute("data-model"); });
  var img = document.querySelector(".gallery img");
  var out = document.createElement("pre");
  out.id = "result";
  out.textContent = JSON.stringify({col: col, first: first, firstSort: firstSort, second: second, secondSort: secondSort,
    visible: visible, shown: document.getElementById("shown").textContent, cms: cms,
    imgWidth: img.naturalWidth, alerts: window.__alerts, scripts: document.scripts.length,
    evil: [].filter.call(document.querySelectorAll("td"), function (c) { return c.textContent === "\\x3cscript>alert(1)\\x3c/script>"; }).length});
  document.body.appendChild(out);
});
</script>
</body>"""


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install chromium; .ci/run does it)")
def test_page_in_headless_chromium(site, tmp_path: Path) -> None:
    store, out = site
    page = (out / "index.html").read_text(encoding="utf-8")
    driven = out / "driven.html"
    driven.write_text(page.replace("<head>", SPY, 1).replace("</body>", DRIVER, 1), encoding="utf-8")
    done = run_chromium(["--virtual-time-budget=5000", "--dump-dom", driven.as_uri()], tmp_path / "profile1")
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
    assert match, done.stdout[-2000:]
    seen = json.loads(html.unescape(match.group(1)))

    board = build_leaderboard(store, tasks=["manifest"])
    expected = sorted(c.point for c in board.cells)
    assert seen["firstSort"] == "descending" and seen["secondSort"] == "ascending"
    assert [float(v) for v in seen["first"]] == pytest.approx(expected[::-1], rel=1e-5)
    assert [float(v) for v in seen["second"]] == pytest.approx(expected, rel=1e-5)
    assert seen["visible"] == ["pixels (knn)"] and seen["shown"] == "1 of 2 models"
    assert seen["cms"][0] != next(f"{c.backbone}/{c.protocol}" for c in board.cells if c.is_best)  # switched
    assert seen["imgWidth"] > 0  # an error-gallery thumbnail loaded
    assert seen["alerts"] == 0 and seen["scripts"] == 3  # the class name stayed text: no script of its own
    assert seen["evil"] >= 2  # ... and shows as the literal name (per-class row, confusion rows)

    shot = tmp_path / "results_page.png"
    done = run_chromium(["--hide-scrollbars", "--window-size=1280,3600", f"--screenshot={shot}",
                          (out / "index.html").as_uri()], tmp_path / "profile2")
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert struct.unpack(">II", data[16:24]) == (1280, 3600)
    try:
        shutil.copy(shot, "/tmp/lb/results_page.png")  # for the lead's closing note; absent folder elsewhere
    except OSError:
        pass


def test_tasks_with_many_classes_leave_their_per_class_tables_to_the_files(site, tmp_path, monkeypatch) -> None:
    """A 1,000-class task would put megabytes of tables on the page: above MAX_PAGE_CLASSES only the files have
    them. And run writes the page without the per-class files (report --per-class writes those)."""
    from lifebench.report import html as page_module

    store, _ = site
    monkeypatch.setattr(page_module, "MAX_PAGE_CLASSES", 2)  # the fixture's tasks have 3 classes
    out = tmp_path / "small"
    assert main(["-q", "report", "--store", str(store), "--html", str(out)]) == 0
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "true \\ predicted" not in text and "alert(1)" in text  # no confusion matrix; the gallery still names it
    assert not (store.parent / "per_class.csv").exists()  # run wrote its page but no per-class files
