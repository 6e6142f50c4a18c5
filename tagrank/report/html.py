"""``report.html``: the test photos with the ground truth and every method's list, to look through.

One self-contained file (no network, no external assets: the photos are embedded as small JPEG
thumbnails, the figures as PNG) that a browser opens from disk. Per photo: the ground truth, each
method's predicted list with every tag green if the ground truth has it and red if not, and the photo's
NDCG (mean over k = 1..K). A few lines of JavaScript sort the photos by one method's NDCG or by the
difference between two methods ("where does the LSTM beat the SVM, and where not"); without JavaScript
the photos stay in name order. Above them: Table 1 and the figures.

The numbers come from :func:`tagrank.report.stats.image_scores`, the same per-image scores that
Table 1's intervals resample, so the report and the table cannot disagree.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import tempfile
from pathlib import Path
from string import Template
from typing import Any

from tagrank.errors import TagrankError
from tagrank.files import atomic_write_text
from tagrank.report.figures import plot_curves
from tagrank.report.methods import REFERENCE, label
from tagrank.report.runs import checkpoint_run, image_paths
from tagrank.report.stats import Row, Scores, image_scores, summarise
from tagrank.report.tables import interval_note, table_cells

log = logging.getLogger("tagrank")

THUMBNAIL = 128  # px, the longer side
CAPTIONS = {"fig3": "Fig. 3: NDCG@k and P@k against k (band: ± std over seeds)",
            "fig4": "Fig. 4: test photos with the ground truth and predicted lists (green: in the ground truth)"}
_e = html.escape

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>$title</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; margin: 0 0 .2em; }
h2 { font-size: 1.2em; margin: 1.4em 0 .4em; }
.note { color: #555; max-width: 70em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; text-align: left; }
#table1 td { font-variant-numeric: tabular-nums; }
figure { margin: .5em 0; }
figure img { max-width: min(100%, 1000px); border: 1px solid #eee; }
#controls { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #ccc; z-index: 1; }
#controls select { margin: 0 .6em 0 .2em; }
#photos td.photo { width: ${thumb}px; font-size: 11px; color: #666; word-break: break-all; }
#photos img { display: block; max-width: ${thumb}px; max-height: ${thumb}px; }
ol { margin: 0; padding-left: 1.6em; }
li.hit { color: #137333; }
li.miss { color: #c5221f; }
li.extra { opacity: .55; }
.score { font-weight: 600; margin-top: .3em; }
.seed { color: #777; font-size: 11px; }
td.diff { font-weight: 600; font-variant-numeric: tabular-nums; }
td.diff.up { background: #e6f4ea; }
td.diff.down { background: #fce8e6; }
</style>
</head>
<body>
<h1>$title</h1>
<p class="note">$intro</p>
<h2>Table 1</h2>
$table
<p class="note">$interval</p>
$figures
<h2>Photos</h2>
<div id="controls">
Sort by <select id="key">$key_options</select>
A: <select id="a">$a_options</select>
$b_select
<select id="dir"><option value="desc">highest first</option><option value="asc">lowest first</option></select>
<span id="summary"></span>
</div>
<p class="note">Green: the tag is in the ground truth; red: it is not; faded: beyond the ground truth's length.
NDCG is the photo's mean over k = 1..$k of NDCG@k$seed_note</p>
<table id="photos">
<thead><tr><th>photo</th><th>ground truth</th>$method_heads</tr></thead>
<tbody>
$rows
</tbody>
</table>
<script>
(function () {
  "use strict";
  var body = document.querySelector("#photos tbody");
  var rows = Array.prototype.slice.call(body.rows);
  var scores = rows.map(function (r) { return r.dataset.ndcg.split(" ").map(Number); });
  var names = rows.map(function (r) { return r.dataset.name; });
  var pick = function (id) { var el = document.getElementById(id); return el ? el.value : null; };
  function update() {
    var key = pick("key"), a = Number(pick("a")), b = Number(pick("b") || 0), sign = pick("dir") === "asc" ? 1 : -1;
    var diff = key === "diff";
    var value = function (i) { return diff ? scores[i][a] - scores[i][b] : scores[i][a]; };
    var order = rows.map(function (r, i) { return i; });
    order.sort(function (i, j) {
      if (key === "name") { return sign * names[i].localeCompare(names[j]); }
      return sign * (value(i) - value(j)) || (names[i] < names[j] ? -1 : 1);
    });
    var up = 0, down = 0;
    order.forEach(function (i) {
      var cell = rows[i].querySelector("td.diff");
      if (cell) {
        var d = scores[i][a] - scores[i][b];
        cell.textContent = (d > 0 ? "+" : "") + d.toFixed(3);
        cell.className = "diff" + (d > 0 ? " up" : d < 0 ? " down" : "");
        up += d > 0; down += d < 0;
      }
      body.appendChild(rows[i]);
    });
    var summary = document.getElementById("summary");
    if (pick("b") !== null && a !== b) {
      var labelOf = function (id) { var s = document.getElementById(id); return s.options[s.selectedIndex].text; };
      summary.textContent = labelOf("a") + " beats " + labelOf("b") + " on " + up + " photos, loses on " + down +
        ", ties on " + (rows.length - up - down) + ".";
    } else {
      summary.textContent = rows.length + " photos.";
    }
    document.documentElement.dataset.rendered = "sorted by " + key;
  }
  ["key", "a", "b", "dir"].forEach(function (id) {
    var el = document.getElementById(id);
    if (el) { el.addEventListener("change", update); }
  });
  update();
})();
</script>
</body>
</html>
""")


def thumbnail(path: Path | None) -> str:
    """A photo as a ``data:`` URI of a small JPEG ("" when there is no readable file)."""
    from PIL import Image

    from tagrank.data.datamodule import load_image

    if path is None:
        return ""
    try:
        im = load_image(path)
    except TagrankError as err:
        log.warning("report.html: %s", err)
        return ""
    im.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _tag_list(tags: list[str], truth: list[str]) -> str:
    items = []
    for i, tag in enumerate(tags):
        classes = ["hit" if tag in truth else "miss"] + (["extra"] if i >= len(truth) else [])
        items.append(f'<li class="{" ".join(classes)}">{_e(tag)}</li>')
    return "<ol>" + "".join(items) + "</ol>"


def _options(values: list[tuple[str, str]], selected: str) -> str:
    return "".join(f'<option value="{_e(v)}"{" selected" if v == selected else ""}>{_e(text)}</option>'
                   for v, text in values)


def render(scores: Scores, rows: list[Row], images: dict[str, Path], title: str, intro: str,
           figures: dict[str, Path] | None = None) -> str:
    """The page as a string: Table 1, the figures, and one table row per photo in ``scores.images``."""
    methods = list(scores.runs)
    head, cells = table_cells(rows)
    table = ('<table id="table1"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"
             + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in cells)
             + "</tbody></table>")
    figs = "".join(
        f'<figure><img alt="{_e(name)}" src="data:image/png;base64,{base64.b64encode(Path(p).read_bytes()).decode()}">'
        f"<figcaption>{_e(CAPTIONS.get(name, name))}</figcaption></figure>" for name, p in (figures or {}).items())
    shown = {m: {p["image"]: p for p in rs[0].predictions} for m, rs in scores.runs.items()}  # lowest seed
    multi_seed = any(len(rs) > 1 for rs in scores.runs.values())
    body = []
    for i, img in enumerate(scores.images):
        truth = shown[methods[0]][img]["truth"]
        means = [float(scores.values[m][:, i, 0].mean()) for m in methods]
        uri = thumbnail(images.get(img))
        photo = f'<img alt="" src="{uri}">' if uri else "<em>(no image)</em>"
        cols = [f'<td class="photo">{photo}{_e(Path(img).name)}</td>',
                "<td>" + "<ol>" + "".join(f"<li>{_e(t)}</li>" for t in truth) + "</ol></td>"]
        for j, m in enumerate(methods):
            own = float(scores.values[m][0, i, 0])
            seed = (f'<div class="seed">this list (seed {scores.runs[m][0].seed}): {own:.3f}</div>'
                    if multi_seed else "")
            cols.append(f"<td>{_tag_list(shown[m][img]['predicted'], truth)}"
                        f'<div class="score">NDCG {means[j]:.3f}</div>{seed}</td>')
        if len(methods) > 1:
            cols.append('<td class="diff"></td>')
        body.append(f'<tr data-name="{_e(img)}" data-ndcg="{" ".join(f"{v:.6f}" for v in means)}">'
                    + "".join(cols) + "</tr>")
    # Default: the reference method (A) against its strongest rival (B), biggest wins first.
    a = methods.index(REFERENCE) if REFERENCE in methods else len(methods) - 1
    rivals = [j for j in range(len(methods)) if j != a]
    ndcg = {r.method: r.ndcg for r in rows}
    b = max(rivals, key=lambda j: ndcg[methods[j]]) if rivals else a
    method_opts = [(str(j), label(m)) for j, m in enumerate(methods)]
    keys = [("ndcg", "NDCG of A")] + ([("diff", "A − B")] if rivals else []) + [("name", "photo name")]
    heads = "".join(f"<th>{_e(label(m))}</th>" for m in methods) + ("<th>A &minus; B</th>" if rivals else "")
    seed_note = (" averaged over each method's seeds; each list is that of the method's lowest seed."
                 if multi_seed else ".")
    return PAGE.substitute(
        title=_e(title), intro=_e(intro), table=table, interval=_e(interval_note(rows)), figures=figs,
        key_options=_options(keys, "diff" if rivals else "ndcg"), a_options=_options(method_opts, str(a)),
        b_select=f'B: <select id="b">{_options(method_opts, str(b))}</select>' if rivals else "",
        k=len(rows[0].ndcg_at), seed_note=seed_note, thumb=THUMBNAIL, method_heads=heads, rows="\n".join(body))


def write_report(path: Path, scores: Scores, rows: list[Row], images: dict[str, Path], title: str, intro: str,
                 figures: dict[str, Path] | None = None) -> Path:
    atomic_write_text(Path(path), render(scores, rows, images, title, intro, figures))
    return Path(path)


def write_eval_report(cfg: Any, ckpt: Path, model: Any, dm: Any) -> Path:
    """``report.html`` beside the ``metrics.json`` and ``predictions.jsonl`` tagrank-eval just wrote:
    its one method's lists, Table 1's row for it and Fig. 3."""
    out_dir = Path(cfg.paths.output_dir)
    run = checkpoint_run(out_dir, ckpt, model, dm)
    scores = image_scores([run])
    rows = summarise(scores)
    with tempfile.TemporaryDirectory() as tmp:
        fig3 = plot_curves(rows, Path(tmp) / "fig3.png", run.data)
        intro = (f"{label(run.method)} ({ckpt}) on the {cfg.split} split of {run.data}: "
                 f"{len(scores.images)} photos with a ground truth.")
        path = write_report(out_dir / "report.html", scores, rows, image_paths(dm), title=f"tagrank-eval: {run.data}",
                            intro=intro, figures={"fig3": fig3})
    log.info("report: %s", path)
    return path
