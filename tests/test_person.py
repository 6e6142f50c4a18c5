"""Leave one annotator out where users read results (issue 24): the person's row and the LOO columns of
Table 1 on a known case, Fig. 3's dashed person line, and the LOO table of tagrank-train / tagrank-eval.

The known case (k = 1..10, linear relevance), two test images:
- ``a.png``: two annotators, both [x, y]. Each held-out merge is [x, y]; the person (the held-out [x, y])
  is perfect: NDCG@k = 1; P@1 = P@2 = 1, P@k = 2/k after (the person named two tags).
- ``b.png``: two annotators, [x] and [y]. Hold out [x]: the truth is [y], the person scores 0; likewise
  the other way round: NDCG = P = 0.
So the person's LOO NDCG is (1 + 0) / 2 = 0.5 and its P is (P_a + 0) / 2.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from tagrank.cli.eval import evaluate
from tagrank.cli.train import train
from tagrank.loo import loo_scores
from tagrank.report import figures, runs, stats, tables

from .conftest import compose_cfg
from .test_captions import sentence, write_set
from .test_table1 import known_sweep, write_run

LISTS = {"a.png": [["x", "y"], ["x", "y"]], "b.png": [["x"], ["y"]]}
TRUTH = {"a.png": ["x", "y"], "b.png": ["x", "y"]}  # the merge of all lists (b: a tie, x named first)
P_A = (1 + 1 + sum(2 / k for k in range(3, 11))) / 10
# method -> seed -> its list for every image
PREDICTED = {"svm": {0: ["x", "y"], 1: ["u", "v"]}, "lstm": {0: ["y", "x"]}}


def person_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    for i, (method, seeds) in enumerate((m, s) for m, ss in PREDICTED.items() for s in ss.items()):
        seed, pred = seeds
        write_run(sweep / str(i), method, seed, "flickr8k",
                  [{"image": img, "truth": TRUTH[img], "predicted": pred, "lists": LISTS[img]} for img in LISTS])
    return sweep


def method_loo(pred: list[str]) -> tuple[float, float]:
    """A method's LOO (NDCG, P): the per-image scores of tagrank.loo (hand-checked in test_loo), averaged."""
    scores = [loo_scores(pred, LISTS[img]) for img in LISTS]
    return (sum(s["ndcg_loo"] for s in scores) / 2, sum(s["p_loo"] for s in scores) / 2)


def test_the_person_row_on_a_known_case(tmp_path):
    rows = stats.summarise(stats.image_scores(runs.load_runs(person_sweep(tmp_path))))
    assert [r.method for r in rows] == ["svm", "lstm", "person"]  # the person last: the ceiling
    person = rows[-1]
    assert person.label == "A person (one caption against the others)"
    assert person.ndcg_loo == pytest.approx(0.5) and person.p_loo == pytest.approx(P_A / 2)
    assert person.n_loo_images == 2 and person.seeds == [] and math.isnan(person.ndcg) and person.ndcg_ci is None
    # Its interval resamples the two images: replicates 0 (b twice), 0.5 and 1 (a twice), a quarter each.
    assert person.ndcg_loo_ci == (0.0, 1.0) and person.p_loo_ci == pytest.approx((0.0, P_A))
    assert person.ndcg_at[0] == pytest.approx(0.5) and person.p_at[9] == pytest.approx(0.1)  # (2/10 + 0) / 2

    svm, lstm = rows[0], rows[1]
    right, wrong = method_loo(["x", "y"]), method_loo(["u", "v"])
    assert wrong == (0.0, 0.0)
    assert svm.ndcg_loo == pytest.approx(right[0] / 2) and svm.p_loo == pytest.approx(right[1] / 2)
    assert svm.ndcg_loo_std == pytest.approx(right[0] / math.sqrt(2))  # seeds 0 and 1: right and all wrong
    assert svm.ndcg_loo_ci[0] < svm.ndcg_loo < svm.ndcg_loo_ci[1]  # the seeds' spread is in the interval
    assert lstm.ndcg_loo == pytest.approx(method_loo(["y", "x"])[0]) and math.isnan(lstm.ndcg_loo_std)
    # The standard columns are untouched by the protocol: scored against the merged truth.
    assert svm.ndcg == pytest.approx(0.5) and lstm.delta is None


def test_table_and_csv_have_the_loo_columns_and_the_person_row(tmp_path):
    rows = stats.summarise(stats.image_scores(runs.load_runs(person_sweep(tmp_path))))
    md = tables.write_table(rows, tmp_path / "out", "flickr8k")
    head = next(line for line in md.splitlines() if line.startswith("| Method"))
    assert head.endswith("| NDCG (LOO) | NDCG (LOO) 95% CI | P (LOO) | P (LOO) 95% CI |")
    line = next(line for line in md.splitlines() if line.startswith("| A person"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:6] == ["–"] * 5  # no standard columns, no difference to the LSTM
    assert cells[6:] == ["0.5000", "[0.0000, 1.0000]", f"{P_A / 2:.4f}", f"[0.0000, {P_A:.4f}]"]
    assert "leave one annotator out" in md.lower() and "The person's row" in md
    table = {r["method"]: r for r in csv.DictReader((tmp_path / "out" / "table1.csv").open())}
    assert list(table["svm"]) == tables.CSV_COLUMNS
    assert table["person"]["ndcg_mean"] == "" and table["person"]["seeds"] == "0"
    assert float(table["person"]["ndcg_loo"]) == 0.5 and float(table["person"]["ndcg_loo_ci_high"]) == 1.0
    assert float(table["svm"]["ndcg_loo"]) == pytest.approx(rows[0].ndcg_loo, abs=1e-6)
    assert float(table["svm"]["p_loo_std"]) == pytest.approx(rows[0].p_loo_std, abs=1e-6)


def test_one_list_per_image_has_no_person_row_nor_loo_columns(tmp_path):
    """The synthetic data (and runs written before the lists were kept): Table 1 as before."""
    rows = stats.summarise(stats.image_scores(runs.load_runs(known_sweep(tmp_path))))
    assert "person" not in [r.method for r in rows] and all(r.ndcg_loo is None for r in rows)
    md = tables.write_table(rows, tmp_path / "out", "synthetic")
    assert "LOO" not in md and "person" not in md
    table = list(csv.DictReader((tmp_path / "out" / "table1.csv").open()))
    assert all(r["ndcg_loo"] == "" for r in table)


def test_fig3_draws_the_person_dashed(tmp_path):
    rows = stats.summarise(stats.image_scores(runs.load_runs(person_sweep(tmp_path))))
    fig = figures.curves_figure(rows, "flickr8k")
    for ax, name in zip(fig.axes, ("ndcg_at", "p_at")):
        lines = {line.get_label(): line for line in ax.get_lines()}
        person = lines["A person (one caption against the others), LOO"]
        assert person.get_linestyle() == "--"
        assert list(person.get_ydata()) == pytest.approx(getattr(rows[-1], name))
        assert all(lines[r.label].get_linestyle() == "-" for r in rows[:-1])
    figures._pyplot().close(fig)
    path = figures.plot_curves(rows, tmp_path / "fig3.png", "flickr8k")
    with Image.open(path) as im:
        assert im.size[0] > 400


PHOTOS = [  # two training photos, two test photos with two captions each, one with a single caption
    ("t1.jpg", "train", [sentence("A man and a dog"), sentence("A dog")]),
    ("t2.jpg", "train", [sentence("A man")]),
    ("v1.jpg", "val", [sentence("A man")]),
    ("a.jpg", "test", [sentence("A man with a dog"), sentence("A dog and a man")]),
    ("b.jpg", "test", [sentence("A man"), sentence("A man and a dog")]),
    ("c.jpg", "test", [sentence("A dog")]),
]


def test_train_and_eval_print_and_save_the_loo_table(tmp_path, cache_dir, capsys):
    """The frequency prior (man, dog) on captions with two lists a test photo: metrics.json's ``loo``
    block is tagrank.loo's on those lists, and tagrank-train and tagrank-eval both print it."""
    root = write_set(tmp_path / "data", PHOTOS, "man men\ndog dogs\n")
    for i, (name, *_) in enumerate(PHOTOS):  # photos the backbone tells apart (write_set's are one colour)
        Image.effect_noise((64, 64), 20 + 15 * i).convert("RGB").save(root / "images" / name)
    data = ["data=captions", f"data.root={root}", "data.vocabulary=vocabulary.txt", "backbone.image_size=64",
            "trainer.enable_progress_bar=false"]
    train(compose_cfg(["model=frequency", *data], tmp_path / "run", cache_dir))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["loo"]
    lists = {"a.jpg": [["man", "dog"], ["dog", "man"]], "b.jpg": [["man"], ["man", "dog"]]}
    expected = [loo_scores(["man", "dog"], ls) for ls in lists.values()]
    assert saved["images"] == 2  # c.jpg has one caption: not in the protocol
    for key in ("ndcg_loo", "p_loo", "person_ndcg_loo", "person_p_loo"):
        assert saved[key] == pytest.approx(sum(e[key] for e in expected) / 2)
    predictions = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert {p["image"]: p.get("lists") for p in predictions} == {**lists, "c.jpg": None}
    capsys.readouterr()

    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"  # composed, not run by the CLI: no .hydra/ beside it
    evaluate(compose_cfg([f"ckpt_path={ckpt}", "backbone=efficientnet_lite0", *data], tmp_path / "eval", cache_dir,
                         config_name="eval"))
    out = capsys.readouterr().out
    assert "leave one annotator out" in out and "(2 images with >= 2 lists; mean over k = 1..10)" in out
    assert f"this model    {saved['ndcg_loo']:.4f}  {saved['p_loo']:.4f}" in out
    assert f"a person      {saved['person_ndcg_loo']:.4f}  {saved['person_p_loo']:.4f}" in out
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["loo"] == saved
