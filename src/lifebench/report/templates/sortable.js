(function () {
  "use strict";
  // Every table.sortable sorts on a click (or Enter/Space) on a heading, by the cells' data-v: numerically for
  // data-type="num" headings, as text otherwise. The first click follows the heading's data-first (descending
  // unless "asc": scores are read best first), the next reverses; a missing value sorts last either way.
  function sortTable(table, col, th) {
    var num = th.getAttribute("data-type") === "num", current = th.getAttribute("aria-sort");
    var first = th.getAttribute("data-first") === "asc" ? "ascending" : "descending";
    var dir = current ? (current === "ascending" ? "descending" : "ascending") : first;
    [].forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0], rows = [].slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute("data-v"), y = b.cells[col].getAttribute("data-v");
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      if (num) { x = parseFloat(x); y = parseFloat(y); }
      var c = x < y ? -1 : x > y ? 1 : 0;
      return dir === "descending" ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  [].forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    [].forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortTable(table, col, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortTable(table, col, th); }
      });
    });
  });
  // The leaderboard (#board) filter: rows whose data-search holds the typed text and, where the page has a
  // #family choice, whose data-family is the chosen one.
  var filter = document.getElementById("filter"), family = document.getElementById("family");
  var board = document.getElementById("board"), shown = document.getElementById("shown");
  function applyFilter() {
    var q = filter.value.trim().toLowerCase(), fam = family ? family.value : "", n = 0, rows = board.tBodies[0].rows;
    [].forEach.call(rows, function (r) {
      var hit = r.getAttribute("data-search").indexOf(q) !== -1 && (!fam || r.getAttribute("data-family") === fam);
      r.hidden = !hit; n += hit ? 1 : 0;
    });
    shown.textContent = n + " of " + rows.length + " models";
  }
  filter.addEventListener("input", applyFilter);
  if (family) { family.addEventListener("change", applyFilter); }
}());
