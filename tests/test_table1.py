"""Table 1 and Figs. 3-4: the aggregation of known runs gives the expected numbers; the one command works."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tagrank.report import figures, loggers, runs, stats, tables
from tagrank.errors import TagrankError
from tagrank.metrics import RankingMetrics

from .conftest import ROOT

TRUTH = [f"t{i}" for i in range(10)]  # every test image has this 10-tag ground truth ...
RIGHT, WRONG = TRUTH, [f"u{i}" for i in range(10)]  # ... a method gets it exactly right (1, 1) or all wrong (0, 0)
IMAGES = ["a.png", "b.png", "c.png", "d.png"]

# method -> seed -> which of the four images it gets right
KNOWN = {
    "lstm": {0: [1, 1, 1, 0], 1: [1, 1, 0, 0]},       # NDCG 0.75, 0.50 -> 0.625 +- 0.1768; per image 1, 1, .5, 0
    "svm": {0: [1, 0, 1, 0], 1: [0, 1, 0, 1]},        # NDCG 0.50, 0.50 -> 0.5 +- 0; every image 0.5
    "frequency": {0: [0, 0, 0, 0], 1: [0, 0, 0, 0]},  # NDCG 0
}


def write_run(run_dir: Path, method: str, seed: int, data: str, preds: list[dict]) -> None:
    """A run directory as tagrank-train writes it; metrics.json is computed from the predictions."""
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": seed, "model": {"top_k": 10, "relevance": "linear"}}),
                   run_dir / ".hydra/config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": {"model": method, "data": data}}}}),
                   run_dir / ".hydra/hydra.yaml")
    ids = {t: i for i, t in enumerate(sorted({t for p in preds for t in p["truth"] + p["predicted"]}))}
    width = max(len(p["truth"]) for p in preds)
    metric = RankingMetrics(10)
    metric.update(torch.tensor([[ids[t] for t in p["predicted"]] for p in preds]),
                  torch.tensor([[ids[t] for t in p["truth"]] + [-1] * (width - len(p["truth"])) for p in preds]))
    metrics = {k: float(v) for k, v in metric.compute().items()}
    (run_dir / "metrics.json").write_text(json.dumps({"split": "test", "metrics": metrics}))
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))


def known_sweep(tmp_path: Path, data: str = "pascal07") -> Path:
    """The layout experiments/table1.py writes: <sweep>/finetuned/N for the RNNs, <sweep>/frozen/N else."""
    sweep = tmp_path / "sweep"
    jobs = {"frozen": 0, "finetuned": 0}
    for method, seeds in KNOWN.items():
        group = "finetuned" if method == "lstm" else "frozen"
        for seed, right in seeds.items():
            preds = [{"image": img, "truth": TRUTH, "predicted": RIGHT if ok else WRONG} for img, ok in zip(IMAGES, right)]
            write_run(sweep / group / str(jobs[group]), method, seed, data, preds)
            jobs[group] += 1
    return sweep


def summary(sweep: Path) -> list[stats.Row]:
    return stats.summarise(stats.image_scores(runs.load_runs(sweep)))


def test_known_runs_give_the_expected_table(tmp_path):
    found = runs.load_runs(known_sweep(tmp_path))
    assert len(found) == 6 and {r.method for r in found} == set(KNOWN)
    summarised = stats.summarise(stats.image_scores(found))
    assert [r.method for r in summarised] == ["frequency", "svm", "lstm"]  # the paper's order
    rows = {r.method: r for r in summarised}

    lstm, svm, freq = rows["lstm"], rows["svm"], rows["frequency"]
    assert lstm.seeds == [0, 1] and lstm.n_images == 4
    assert lstm.ndcg == pytest.approx(0.625) and lstm.p == pytest.approx(0.625)
    assert lstm.ndcg_std == pytest.approx(np.std([0.75, 0.5], ddof=1)) == pytest.approx(0.1767767)
    assert lstm.ndcg_at == pytest.approx([0.625] * 10) and lstm.p_at_std == pytest.approx([0.1767767] * 10)
    lo, hi = lstm.ndcg_ci
    assert 0.0 <= lo < 0.625 < hi <= 1.0
    assert svm.ndcg == pytest.approx(0.5) and svm.ndcg_std == 0.0
    # Every image scores 0.5 averaged over the two seeds, but each seed alone is 1 on half the images and
    # 0 on the others: a replicate that draws one seed twice sees that spread.
    assert svm.ndcg_ci[0] < 0.5 < svm.ndcg_ci[1]
    assert svm.delta == pytest.approx(-0.125)  # per image 0.5 - (1, 1, .5, 0)
    assert freq.ndcg == 0.0 and freq.ndcg_ci == (0.0, 0.0) and freq.delta == pytest.approx(-0.625)
    assert lstm.delta is None
    assert svm.paper == (0.6698, 0.4631) and lstm.paper == (0.7061, 0.5081) and freq.paper is None

    out = tmp_path / "results"
    md = tables.write_table(list(rows.values()), out, "pascal07")
    assert (out / "table1.md").read_text() == md
    line = next(x for x in md.splitlines() if x.startswith("| Ours (LSTM) |"))
    assert line.startswith("| Ours (LSTM) | 0.6250 ± 0.1768 | [") and line.endswith("| – | 0.7061 | 0.5081 |")
    assert "| SVM | 0.5000 ± 0.0000 | [" in md and "| -0.1250 [" in md
    assert "each replicate resamples the test images with replacement and, for each method independently, its seeds" in md
    assert "one seed" not in md
    table = {r["method"]: r for r in csv.DictReader((out / "table1.csv").open())}
    assert float(table["lstm"]["ndcg_mean"]) == 0.625 and float(table["svm"]["delta_ndcg"]) == -0.125
    assert table["svm"]["paper_ndcg"] == "0.6698" and table["frequency"]["paper_ndcg"] == ""
    curves = list(csv.DictReader((out / "curves.csv").open()))
    assert len(curves) == 30 and float(curves[0]["ndcg"]) == 0.0


def test_no_paper_columns_for_a_dataset_the_paper_did_not_use(tmp_path):
    rows = summary(known_sweep(tmp_path, data="synthetic"))
    md = tables.table_markdown(rows, "synthetic")
    assert "paper" not in md and all(r.paper is None for r in rows)


def test_a_run_whose_metrics_disagree_with_its_predictions_is_refused(tmp_path):
    sweep = known_sweep(tmp_path)
    path = sweep / "finetuned/0/metrics.json"  # lstm, seed 0
    written = json.loads(path.read_text())
    written["metrics"]["ndcg_mean"] += 0.1
    path.write_text(json.dumps(written))
    with pytest.raises(TagrankError, match="predictions.jsonl gives NDCG 0.7500 but metrics.json says 0.8500"):
        summary(sweep)


def test_a_failed_run_is_named(tmp_path):
    sweep = known_sweep(tmp_path)
    (sweep / "frozen/1/metrics.json").unlink()
    with pytest.raises(TagrankError, match="frozen/1: no metrics.json .*remove this folder to aggregate without it$"):
        runs.load_runs(sweep)
    shutil.rmtree(sweep / "frozen/1")  # as the message says: the others aggregate
    assert len(runs.load_runs(sweep)) == len(list(sweep.glob("*/*/.hydra")))


@pytest.mark.parametrize("name", ["metrics.json", "predictions.jsonl"])
def test_a_truncated_results_file_is_one_line_naming_it(name, tmp_path):
    sweep = known_sweep(tmp_path)
    path = sweep / "frozen/1" / name
    path.write_text(path.read_text()[:25])  # cut short, as a run killed while writing leaves it
    with pytest.raises(TagrankError, match=rf"^{re.escape(str(path))}: not a complete tagrank results file"):
        runs.load_runs(sweep)


def test_one_seed_a_method_is_said_in_the_header(tmp_path):
    sweep = known_sweep(tmp_path)
    for job in ("frozen/1", "frozen/3"):  # the svm's and the prior's seed 1
        shutil.rmtree(sweep / job)
    md = tables.table_markdown(summary(sweep), "pascal07")
    assert "Frequency prior, SVM: one seed, so their intervals are the bootstrap over test images alone." in md
    assert "mean ± std over 1/2 seeds." in md
    shutil.rmtree(sweep / "finetuned/1")
    md = tables.table_markdown(summary(sweep), "pascal07")
    assert "Every method has one seed here, so the intervals are the bootstrap over test images alone" in md
    assert "mean ± std over 1 seed." in md


# -- the two-level bootstrap ------------------------------------------------------------------------
def image_bootstrap(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """The plain bootstrap over images of the mean of ``values``, written out as the textbook does."""
    idx = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(axis=1)


def test_one_seed_is_the_image_bootstrap():
    values = np.random.default_rng(1).random((1, 700, 2))
    reps = stats.seed_image_bootstrap({"m": values})["m"]
    assert reps.shape == (2000, 2)
    np.testing.assert_allclose(reps[:, 0], image_bootstrap(values[0, :, 0]), rtol=1e-12)
    np.testing.assert_allclose(reps[:, 1], image_bootstrap(values[0, :, 1]), rtol=1e-12)


def test_seeds_that_disagree_widen_the_interval_to_the_normal_approximation():
    rng = np.random.default_rng(2)
    image = rng.normal(0.5, 0.2, size=1000)  # how hard each image is
    offsets = np.array([-0.1, -0.05, 0.0, 0.05, 0.1])  # how good each seed's run is
    values = (image[None, :] + offsets[:, None])[..., None]  # [5 seeds, 1000 images, 1]
    lo, hi = stats.percentile_ci(stats.seed_image_bootstrap({"m": values})["m"][:, 0])
    plain = stats.percentile_ci(image_bootstrap(values.mean(axis=0)[:, 0]))
    assert hi - lo > 4 * (plain[1] - plain[0])
    # The bootstrap's variance of a mean of n draws is the plug-in variance (ddof=0) over n, per level.
    sd = np.sqrt(offsets.var() / len(offsets) + image.var() / len(image))
    assert lo == pytest.approx(values.mean() - 1.96 * sd, abs=0.15 * 1.96 * sd)
    assert hi == pytest.approx(values.mean() + 1.96 * sd, abs=0.15 * 1.96 * sd)


def test_the_difference_is_paired_by_image_and_resamples_each_methods_seeds():
    rng = np.random.default_rng(3)
    a = np.repeat(rng.random((1, 500, 1)), 3, axis=0)  # three seeds that agree exactly
    reps = stats.seed_image_bootstrap({"a": a, "b": a + 0.01, "c": a + np.array([-0.05, 0.0, 0.05])[:, None, None]})
    assert stats.percentile_ci(reps["a"][:, 0])[1] - stats.percentile_ci(reps["a"][:, 0])[0] > 0.03
    # b is a shifted by 0.01 on every image: paired, the images' spread cancels and nothing else varies.
    assert stats.percentile_ci(reps["b"][:, 0] - reps["a"][:, 0]) == pytest.approx((0.01, 0.01))
    # c's three seeds disagree by -0.05, 0, +0.05: only their spread is left in the difference, the mean of
    # three seeds drawn with replacement, which is -0.05 (or +0.05) in 1/27 = 3.7% of the replicates.
    assert stats.percentile_ci(reps["c"][:, 0] - reps["a"][:, 0]) == pytest.approx((-0.05, 0.05))


def test_the_bootstrap_is_deterministic_and_fast():
    rng = np.random.default_rng(4)
    values = {f"m{i}": rng.random((5, 1000, 2)) for i in range(5)}  # 5 methods x 5 seeds x 1000 images
    start = time.perf_counter()
    first = stats.seed_image_bootstrap(values, n_boot=2000, seed=7)
    elapsed = time.perf_counter() - start
    again = stats.seed_image_bootstrap(values, n_boot=2000, seed=7)
    other = stats.seed_image_bootstrap(values, n_boot=2000, seed=8)
    assert all(np.array_equal(first[m], again[m]) for m in values)
    assert not np.array_equal(first["m0"], other["m0"])
    assert elapsed < 20, f"{elapsed:.1f} s: the bootstrap must be vectorised (about 0.3 s on 2 cores)"


def test_figures_and_the_wandb_table(tmp_path, monkeypatch):
    found = runs.load_runs(known_sweep(tmp_path))
    rows = stats.summarise(stats.image_scores(found))
    for i, name in enumerate(IMAGES):  # stand-in image files
        Image.new("RGB", (32, 32), (40 * i, 100, 200)).save(tmp_path / name)
    examples = figures.pick_examples(found, {img: tmp_path / img for img in IMAGES}, n=3)
    assert len(examples) == 3 and set(examples[0].lists) == {"Ours (LSTM)", "SVM"}
    fig3 = figures.plot_curves(rows, tmp_path / "fig3.png", "pascal07")
    fig4 = figures.plot_examples(examples, tmp_path / "fig4.png")
    for fig in (fig3, fig4):
        with Image.open(fig) as im:
            assert im.size[0] > 400 and im.size[1] > 200

    monkeypatch.setenv("WANDB_MODE", "offline")
    loggers.log_aggregate("wandb", tmp_path, rows, "pascal07", {"fig3": fig3, "fig4": fig4}, "md")
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    table = json.loads(next(run_dir.glob("files/media/table/table1_*.table.json")).read_text())
    assert table["columns"] == tables.CSV_COLUMNS
    assert [r[0] for r in table["data"]] == ["frequency", "svm", "lstm"] and table["data"][2][4] == 0.625
    assert len(list(run_dir.glob("files/media/images/*.png"))) == 2
    loggers.log_aggregate("tensorboard", tmp_path, rows, "pascal07", {"fig3": fig3}, "md")
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_recurrent_methods_get_their_finetuning_schedule():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import table1
    finally:
        sys.path.pop(0)
    settings = dict(table1.SETTINGS)
    assert table1.rnn_overrides(settings) == ["experiment=synthetic_finetune"]
    assert table1.rnn_overrides({**settings, "quick": "true"}) == []
    assert table1.rnn_overrides({**settings, "data": "pascal07"}) == []  # the model config's own 7500 steps
    assert table1.rnn_overrides({**settings, "finetune": "none"}) == ["model.finetune_after_steps=0"]
    assert table1.rnn_overrides({**settings, "finetune": "paper_pascal07"}) == ["experiment=paper_pascal07"]


def test_recurrent_runs_are_shared_between_concurrent_jobs():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import table1
    finally:
        sys.path.pop(0)
    assert table1.split_runs(["lstm", "naive_rnn"], [0, 1, 2], 2) == [[("lstm", [0, 1, 2])], [("naive_rnn", [0, 1, 2])]]
    assert table1.split_runs(["lstm", "naive_rnn"], [0, 1, 2], 4) == [
        [("lstm", [0, 1])], [("lstm", [2]), ("naive_rnn", [0])], [("naive_rnn", [1])], [("naive_rnn", [2])]]
    assert table1.split_runs(["lstm"], [0], 2) == [[("lstm", [0])]]
    assert table1.job_count("3") == 3
    with pytest.raises(TagrankError, match="jobs='0'"):
        table1.job_count("0")


@pytest.mark.parametrize("arguments, message", [
    (["quick=maybe"], "quick='maybe': expected true or false"),
    (["seeds=abc"], "seeds='abc': expected a positive whole number"),
    (["seeds=0"], "seeds='0': expected a positive whole number"),
    (["methods=frequency,svm"], "reference=lstm (the method of the paired difference column) is not among "
                                "methods=frequency,svm: add it, or pass reference=frequency"),
    (["methods=lstm,nosuch"], "methods=lstm,nosuch: expected a comma-separated list of frequency, label_query, lstm, lstm_attention, lstm_tuned, "
                              "naive_rnn, naive_rnn_captioning, scorer, scorer_tuned, svm, svm_rank"),
    (["aggregate=/x", "seeds=5", "trainer.max_epochs=2", "reference=svm"],
     "aggregate= re-reads finished runs, so seeds=5 sweep_dir={sweep} trainer.max_epochs=2 would change nothing; "
     "with aggregate= pass "
     "only logger, results, reference, quick"),
])
def test_table1_rejects_bad_arguments_before_any_run(arguments, message, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/table1.py"), *arguments,
                           f"sweep_dir={tmp_path / 'sweep'}"], capture_output=True, text=True, timeout=120)
    message = message.format(sweep=tmp_path / "sweep")
    assert proc.returncode == 2 and proc.stderr.strip() == f"table1: error: {message}"
    assert not (tmp_path / "sweep").exists()


def test_a_quick_table_never_lands_on_the_reference_results(tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import table1
    finally:
        sys.path.pop(0)
    settings, _ = table1.parse(["quick=true"])
    assert table1.results_dir(settings, "synthetic") == Path("results/quick/synthetic")
    assert table1.results_dir(table1.parse([])[0], "synthetic") == Path("results/synthetic")
    assert table1.results_dir(table1.parse(["quick=true", "results=/r"])[0], "synthetic") == Path("/r/synthetic")
    # aggregate= of a sweep that quick=true made (its smoke overrides in every run) goes there too
    sweep = known_sweep(tmp_path)
    assert not table1.made_quick(runs.load_runs(sweep))
    for run in runs.load_runs(sweep):
        OmegaConf.save(OmegaConf.create([*table1.QUICK, f"seed={run.seed}"]), run.path / ".hydra/overrides.yaml")
    assert table1.made_quick(runs.load_runs(sweep))
    assert table1.table_dir(table1.parse([f"aggregate={sweep}"])[0], runs.load_runs(sweep)) == \
        Path("results/quick/pascal07")
    assert table1.table_dir(table1.parse([f"aggregate={sweep}", "results=/r"])[0], runs.load_runs(sweep)) == \
        Path("/r/pascal07")  # a folder the user names is theirs


@pytest.mark.slow
def test_table1_quick_end_to_end(tmp_path, cli_env):
    """The one command, in quick mode: real multirun of tagrank-train, then the table and figures."""
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/table1.py"), "quick=true", "seeds=2",
                           f"results={tmp_path / 'results'}", f"sweep_dir={tmp_path / 'sweep'}", "logger=wandb"],
                          capture_output=True, text=True, env=cli_env, timeout=1800, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "results/synthetic"
    for name in ("table1.md", "table1.csv", "curves.csv", "fig3.png", "fig4.png", "report.html"):
        assert (out / name).is_file(), name
    table = {r["method"]: r for r in csv.DictReader((out / "table1.csv").open())}
    assert set(table) == {"lstm", "svm", "svm_rank", "naive_rnn", "frequency"}
    assert all(r["seeds"] == "2" for r in table.values())
    for method in ("lstm", "svm", "svm_rank", "naive_rnn"):  # every learned method clears the floor
        assert float(table[method]["ndcg_ci_low"]) > float(table["frequency"]["ndcg_ci_high"]), method
    assert list((out / "wandb").glob("offline-run-*")) and "Ours (LSTM)" in proc.stdout
