"""report.html: the right photos, lists, colours and numbers, and a real headless Chromium renders it."""

from __future__ import annotations

import base64
import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tagrank.errors import TagrankError
from tagrank.cli.eval import evaluate
from tagrank.report import html, runs, stats

from .conftest import compose_cfg
from .test_table1 import write_run

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; `make test-browser-setup` installs it where it can
needs_chromium = pytest.mark.skipif(not CHROMIUM.is_file(), reason=(
    f"{CHROMIUM} is absent: install Debian's chromium (make test-browser-setup, or apt-get install chromium) "
    "to render report.html in a real browser"))

# Each tag is drawn as its own shape and colour, so a look at the screenshot tells which tags a photo has.
SHAPES = {"sun": ("ellipse", (255, 200, 0)), "car": ("rectangle", (200, 30, 30)), "tree": ("polygon", (30, 150, 50)),
          "boat": ("rectangle", (40, 80, 220))}
OTHER = ["dog", "cat", "bird", "road", "sky", "cloud", "flower", "lamp", "chair", "kite"]  # never in a photo
SCENES = {  # photo -> its objects, largest (most important) first: that order is the ground truth
    "p1.png": ["car", "sun"], "p2.png": ["tree", "boat", "sun"], "p3.png": ["boat"],
    "p4.png": ["sun", "tree", "car", "boat"], "p5.png": ["tree", "car"], "p6.png": ["car", "boat", "tree"],
}


def draw(path: Path, objects: list[str]) -> None:
    im = Image.new("RGB", (160, 120), (235, 235, 235))
    pen = ImageDraw.Draw(im)
    for i, tag in enumerate(objects):
        size = 70 - 15 * i
        x, y = 10 + 35 * i, 10 + 10 * i
        shape, colour = SHAPES[tag]
        if shape == "polygon":
            pen.polygon([(x + size // 2, y), (x, y + size), (x + size, y + size)], fill=colour)
        else:
            getattr(pen, shape)([x, y, x + size, y + size], fill=colour)
    im.save(path)


def fill(tags: list[str]) -> list[str]:
    """A method's ten-tag list: ``tags`` first, then tags no photo has."""
    return (tags + [t for t in OTHER if t not in tags])[:10]


def predictions(method: str, seed: int) -> list[dict]:
    out = []
    for img, truth in SCENES.items():
        if method == "lstm":  # right, but seed 1 swaps the first two
            pred = truth[::-1] if seed == 1 else truth
        elif method == "svm":  # a wrong tag first, then the truth backwards
            pred = ["dog"] + truth[::-1]
        else:  # the same list for every photo
            pred = ["sky", "sun", "car"]
        out.append({"image": img, "truth": truth, "predicted": fill(pred)})
    return out


@pytest.fixture
def report(tmp_path) -> tuple[Path, stats.Scores]:
    for img, objects in SCENES.items():
        draw(tmp_path / img, objects)
    for i, (method, seed) in enumerate([("lstm", 0), ("lstm", 1), ("svm", 0), ("svm", 1), ("frequency", 0)]):
        write_run(tmp_path / "sweep" / str(i), method, seed, "synthetic", predictions(method, seed))
    scores = stats.image_scores(runs.load_runs(tmp_path / "sweep"))
    rows = stats.summarise(scores)
    fig = tmp_path / "fig.png"
    Image.new("RGB", (300, 100), (90, 90, 200)).save(fig)
    path = html.write_report(tmp_path / "report.html", scores, rows, {img: tmp_path / img for img in SCENES},
                             title="Table 1 on shapes", intro="three methods", figures={"fig3": fig})
    return path, scores


def photo_rows(page: str) -> dict[str, str]:
    return dict(re.findall(r'<tr data-name="([^"]+)"(.*?)</tr>', page, flags=re.S))


def test_report_shows_every_photo_with_its_lists_and_scores(report):
    path, scores = report
    page = path.read_text()
    assert not re.search(r'(src|href)="(?!data:)', page), "everything embedded, nothing fetched"
    rows = photo_rows(page)
    assert list(rows) == sorted(SCENES)
    p2 = rows["p2.png"]
    thumb = base64.b64decode(re.search(r'src="data:image/jpeg;base64,([^"]+)"', p2).group(1))
    with Image.open(io.BytesIO(thumb)) as im:
        assert im.format == "JPEG" and im.size == (128, 96)
        assert im.getpixel((35, 40))[1] > 120  # the tree's green, where draw() put it
    lists = re.findall(r"<ol>(.*?)</ol>", p2)
    assert lists[0] == "<li>tree</li><li>boat</li><li>sun</li>"  # the ground truth
    # The order of the columns is the table's: frequency prior, SVM, LSTM; the SVM's list starts wrong.
    assert lists[2].startswith('<li class="miss">dog</li><li class="hit">sun</li><li class="hit">boat</li>'
                               '<li class="hit extra">tree</li><li class="miss extra">cat</li>')
    # Per-photo NDCG: each method's mean over its seeds of the same per-image score the table resamples.
    means = [float(v) for v in re.search(r'data-ndcg="([^"]+)"', p2).group(1).split()]
    i = sorted(SCENES).index("p2.png")
    expected = [scores.values[m][:, i, 0].mean() for m in ("frequency", "svm", "lstm")]
    assert means == pytest.approx(expected, abs=1e-6) and means[2] > means[1]
    assert "Ours (LSTM)" in page and "Naive" not in page and "two-level percentile bootstrap" in page
    assert page.count("data:image/png;base64,") == 1  # the figure


def test_a_bad_report_value_is_one_clear_message_before_any_work(tmp_path):
    # Checked first: before the checkpoint is looked at (here there is none), not after the evaluation.
    cfg = compose_cfg(["ckpt_path=/nowhere/best.ckpt", "report=maybe"], tmp_path / "eval", tmp_path / "cache",
                      config_name="eval")
    with pytest.raises(TagrankError, match=r"^report='maybe' has the wrong type: expected bool$"):
        evaluate(cfg)


def chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a local file, with nothing that reaches the network."""
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120)


@needs_chromium
def test_chromium_renders_and_sorts_the_report_without_script_errors(report, tmp_path):
    path, scores = report
    proc = chromium(path, tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not errors, errors
    assert 'data-rendered="sorted by diff"' in proc.stdout  # the script ran to its end
    # Sorted by LSTM minus its strongest rival (the SVM), biggest win first, as the script does it.
    assert [r.method for r in sorted(stats.summarise(scores), key=lambda r: r.ndcg)] == ["frequency", "svm", "lstm"]
    i = {img: j for j, img in enumerate(scores.images)}
    diff = {img: scores.values["lstm"][:, i[img], 0].mean() - scores.values["svm"][:, i[img], 0].mean() for img in SCENES}
    assert list(photo_rows(proc.stdout)) == sorted(SCENES, key=lambda img: (-diff[img], img))
    wins = sum(d > 0 for d in diff.values())
    assert f"Ours (LSTM) beats SVM on {wins} photos, loses on {sum(d < 0 for d in diff.values())}" in proc.stdout

    shot = tmp_path / "report.png"
    proc = chromium(path, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    def share(rgb: tuple[int, int, int]) -> float:
        return float((np.abs(pixels - rgb).sum(1) < 40).mean())
    assert share((19, 115, 51)) > 1e-4 and share((197, 34, 31)) > 1e-4  # green and red tags are drawn
    assert share((255, 200, 0)) > 1e-4 and share((40, 80, 220)) > 1e-4  # so are the photos' suns and boats
