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
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from tagrank import CONF_DIR, config_options
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


def table1_module():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import table1
    finally:
        sys.path.pop(0)
    return table1


def plan(*overrides: str):
    """table1's settings as the script reads them: tagrank/conf/table1.yaml composed by Hydra with ``overrides``."""
    table1 = table1_module()
    others, model = table1.model_settings(list(overrides))  # as main() does
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="table1", overrides=others, return_hydra_config=True)
    return table1.parse(cfg, cfg.hydra, model)


def test_recurrent_methods_get_their_finetuning_schedule():
    table1 = table1_module()
    assert table1.rnn_overrides(plan()) == ["experiment=synthetic_finetune"]
    assert table1.rnn_overrides(plan("data=flickr8k")) == ["experiment=flickr8k_frozen"]
    assert table1.rnn_overrides(plan("quick=true")) == []
    assert table1.rnn_overrides(plan("data=pascal07")) == []  # the model config's own 7500 steps
    assert table1.rnn_overrides(plan("finetune=none")) == ["model.finetune_after_steps=0"]
    assert table1.rnn_overrides(plan("finetune=paper_pascal07")) == ["experiment=paper_pascal07"]
    # experiment= goes to every run with its own schedule (and picks the data: the composed config's choice)
    chosen = plan("experiment=paper_pascal07", "trainer.max_epochs=3")
    assert table1.rnn_overrides(chosen) == [] and chosen.data == "pascal07"
    assert chosen.passthrough == ["experiment=paper_pascal07", "trainer.max_epochs=3"]


def test_a_data_sets_protocol_goes_to_every_run_unless_the_command_line_says_otherwise():
    table1 = table1_module()
    reference = [str(s) for s in OmegaConf.load(Path(CONF_DIR) / "table1.yaml").protocol.flickr8k]
    assert reference and plan("data=flickr8k").protocol == reference
    assert plan().protocol == [] and plan("data=pascal07").protocol == []  # only Flickr8k has one
    assert plan("data=flickr8k", "protocol=null").protocol == []
    assert plan("data=flickr8k", "experiment=flickr8k_finetune").protocol == []  # the experiment is the protocol
    own = [s.partition("=")[0] + "=efficientnet_lite0" for s in reference if s.startswith("backbone=")]
    rest = [s for s in reference if not s.startswith("backbone=")]
    assert own and plan("data=flickr8k", *own).protocol == rest
    # a key under the protocol's takes it over: the default backbone at 224 px, not the protocol's at 224
    assert plan("data=flickr8k", "backbone.image_size=224").protocol == rest
    assert plan("data=flickr8k", "backbone.weights=/w.pth").protocol == rest
    sweep = Path("/tmp/sweep")
    lines = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(table1, "run_all", lambda group, jobs, sweep_dir, threads: lines.extend(c for j in jobs for c in j))
        table1.launch(plan("data=flickr8k", "methods=[svm,scorer]", "reference=svm", "trainer.max_steps=7"), sweep)
    for line in lines:  # the protocol before the user's settings: the user's own trainer.max_steps stands
        assert line[-len(reference) - 1:] == [*reference, "trainer.max_steps=7"], line
    assert any("experiment=flickr8k_frozen" in line for line in lines)


def test_flickr8k_frozen_keeps_the_backbone_frozen_through_the_finetune_schedule():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        frozen = compose(config_name="train", overrides=["experiment=flickr8k_frozen", "model=lstm", "data=flickr8k"])
        staged = compose(config_name="train", overrides=["experiment=flickr8k_finetune", "model=lstm", "data=flickr8k"])
    assert frozen.model.finetune_after_steps == 0 and staged.model.finetune_after_steps > 0
    assert frozen.trainer == staged.trainer and frozen.callbacks == staged.callbacks


def test_settings_are_read_from_the_composed_config():
    table1 = table1_module()
    given = plan("methods=[scorer,svm]", "reference=svm", "seeds=2", "logger=wandb", "data.noise=0.3",
                 "launcher=local", "hydra.launcher.timeout_min=5")
    assert given.methods == ["scorer", "svm"] and given.seeds == 2 and given.logger == "wandb" and not given.slurm
    # data= and logger= are set apart (every run gets them first); Hydra's own settings go to the runs too
    assert given.passthrough == ["data.noise=0.3", "launcher=local", "hydra.launcher.timeout_min=5"]
    assert plan("methods=lstm").methods == ["lstm"]
    paper = ["lstm", "svm", "svm_rank", "naive_rnn", "naive_rnn_captioning", "scorer", "frequency"]
    assert plan().methods == [*paper, "scorer_lambdaloss", "lstm_attention"]  # label_query: by methods= only
    assert plan("data=flickr8k").methods == plan().methods  # make table1 DATA=flickr8k: every method
    # quick=true runs the short list unless methods= is given (a smoke run of minutes)
    assert plan("quick=true").methods == paper
    assert plan("quick=true", "methods=[lstm,label_query]").methods == ["lstm", "label_query"]
    assert plan("quick=true", "quick_methods=[lstm,svm]").methods == ["lstm", "svm"]
    with pytest.raises(TagrankError, match=r"^quick_methods=\[lstm,nosuch\]: expected a list of .*\(quick_methods="):
        plan("quick=true", "quick_methods=[lstm,nosuch]")
    with pytest.raises(TagrankError, match=r"^reference=lstm .* is not among quick_methods=\[svm\]"):
        plan("quick=true", "quick_methods=[svm]")
    # SLURM is the composed launcher, however it was chosen
    assert plan("launcher=slurm").slurm and not plan("launcher=local").slurm
    assert plan("hydra/launcher=submitit_slurm").slurm
    assert table1.comma_list(["seeds=2", "methods=scorer,svm"]) == \
        "methods=scorer,svm: a list is written methods=[scorer,svm] (Hydra's list form)"
    assert table1.comma_list(["methods=[scorer,svm]", "data.noise=0.1"]) is None
    assert table1.comma_list(["quick=true", "quick_methods=scorer,svm"]) == \
        "quick_methods=scorer,svm: a list is written quick_methods=[scorer,svm] (Hydra's list form)"


def test_every_default_method_has_a_label_and_the_paper_rows_come_first():
    """Table 1's rows: each default method under a name a reader knows (not its config name), the paper's
    methods and the frequency floor first, then the methods of this project."""
    from tagrank.report import methods as names

    default = [*plan().methods, "label_query"]
    assert all(names.label(m) != m for m in default), [m for m in default if names.label(m) == m]
    rows = sorted(default, key=names.row_order)
    paper = {"frequency", *names.PAPER["pascal07"]}
    assert set(rows[:len(paper)]) == paper
    assert rows[len(paper):] == ["scorer", "scorer_lambdaloss", "lstm_attention", "label_query"]


def launched(monkeypatch, tmp_path, *overrides: str) -> list[list[list[list[str]]]]:
    """The tagrank-train commands table1 would run for ``overrides`` (run_all recorded, nothing runs)."""
    table1 = table1_module()
    calls = []
    monkeypatch.setattr(table1, "run_all", lambda group, jobs, sweep, threads: calls.append(jobs))
    monkeypatch.setattr(table1, "train_executable", lambda: "tagrank-train")
    table1.launch(plan(*overrides), tmp_path / "sweep")
    return calls


def test_jobs_on_slurm_is_the_fine_tuning_arrays_parallelism(monkeypatch, tmp_path):
    slurm = ["launcher=slurm", "methods=[lstm,naive_rnn,svm]", "hydra.launcher.partition=gpu"]
    frozen, tuned = launched(monkeypatch, tmp_path, *slurm, "jobs=3")
    assert frozen == [[["tagrank-train", "-m", "model=svm", "seed=0", "data=synthetic", "logger=csv",
                        "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path / 'sweep/frozen'}",
                        "launcher=slurm", "hydra.launcher.partition=gpu"]]]
    [[command]] = tuned  # one multirun: one job array, 3 of its jobs at a time
    assert command[2:4] == ["model=lstm,naive_rnn", "seed=0,1,2"]
    assert command[-4:] == ["experiment=synthetic_finetune", "hydra.launcher.array_parallelism=3", "launcher=slurm",
                            "hydra.launcher.partition=gpu"]
    [_, [[auto]]] = launched(monkeypatch, tmp_path, *slurm)  # jobs=auto: the launcher's own array_parallelism
    assert not any("array_parallelism" in a for a in auto)
    with pytest.raises(TagrankError, match="jobs=2 and hydra.launcher.array_parallelism=4 both say"):
        launched(monkeypatch, tmp_path, *slurm, "jobs=2", "hydra.launcher.array_parallelism=4")
    [local] = launched(monkeypatch, tmp_path, "methods=[lstm,naive_rnn]", "reference=lstm", "jobs=2")  # 2 multiruns at once
    assert [[c[2:4] for c in job] for job in local] == [[["model=lstm", "seed=0,1,2"]], [["model=naive_rnn", "seed=0,1,2"]]]


def test_recurrent_runs_are_shared_between_concurrent_jobs():
    table1 = table1_module()
    assert table1.split_runs(["lstm", "naive_rnn"], [0, 1, 2], 2) == [[("lstm", [0, 1, 2])], [("naive_rnn", [0, 1, 2])]]
    assert table1.split_runs(["lstm", "naive_rnn"], [0, 1, 2], 4) == [
        [("lstm", [0, 1])], [("lstm", [2]), ("naive_rnn", [0])], [("naive_rnn", [1])], [("naive_rnn", [2])]]
    assert table1.split_runs(["lstm"], [0], 2) == [[("lstm", [0])]]
    assert table1.job_count(3) == 3 and table1.job_count("auto") is None
    with pytest.raises(TagrankError, match="jobs=0"):
        table1.job_count(0)


@pytest.mark.parametrize("arguments, message", [
    (["quick=maybe"], "quick='maybe' has the wrong type: expected bool"),
    (["seeds=abc"], "seeds='abc' has the wrong type: expected int"),
    (["seeds=0"], "seeds=0 is out of range: expected int > 0"),
    (["jobs=0"], "jobs=0: expected a positive whole number or auto"),
    (["methods=[frequency,svm]"], "reference=lstm (the method of the paired difference column) is not among "
                                  "methods=[frequency,svm]: add it, or pass reference=frequency"),
    (["methods=[lstm,nosuch]"], "methods=[lstm,nosuch]: expected a list of frequency, label_query, lstm, lstm_attention, lstm_tuned, "
                                "naive_rnn, naive_rnn_captioning, scorer, scorer_lambdaloss, scorer_tuned, svm, svm_rank "
                                "(methods=[lstm,svm])"),
    (["methods='scorer,svm'"], "methods=scorer,svm: a list is written methods=[scorer,svm] (Hydra's list form)"),
    (["quick_methods=[lstm,svm]"], "quick_methods=[lstm,svm]: the list quick=true runs, so here it would change "
                                   "nothing: add quick=true, or pass methods=[...]"),
    (["quick=true", "methods=[lstm]", "quick_methods=[svm]"], "quick_methods=[svm]: the list quick=true runs, so "
                                                               "here it would change nothing: pass one of methods= "
                                                               "and quick_methods="),
    (["model=svm"], "model=svm: table1 sets model for each run; pass methods=[...]"),
    (["seed=1"], "seed=1: table1 sets seed for each run; pass seeds=<how many>"),
    (["data=flickr8k", "quick=true"], "quick=true shrinks the synthetic data; it does not apply to data=flickr8k"),
    (["finetune=paper_pascal07", "experiment=synthetic_finetune"],
     "finetune=paper_pascal07 and experiment=synthetic_finetune both choose an experiment config for the "
     "fine-tuning runs: pass one of them"),
    (["aggregate=/x", "seeds=5", "sweep_dir=/s", "trainer.max_epochs=2", "reference=svm", "hydra.verbose=true"],
     "aggregate= re-reads finished runs, so seeds=5 sweep_dir=/s trainer.max_epochs=2 hydra.verbose=true would "
     "change nothing; with aggregate= pass only logger, results, reference, quick"),
])
def test_table1_rejects_bad_arguments_before_any_run(arguments, message):
    with pytest.raises(TagrankError) as err:
        plan(*arguments)
    assert str(err.value) == message


@pytest.mark.parametrize("argument, message", [
    ("methods=scorer,svm", "methods=scorer,svm: a list is written methods=[scorer,svm] (Hydra's list form)"),
    pytest.param("seedz=3", "seedz is not a setting of the config; expected one of [", marks=pytest.mark.slow),
    pytest.param("seeds=0", "seeds=0 is out of range", marks=pytest.mark.slow),
])
def test_the_script_says_a_bad_argument_in_one_line_and_exits_2(argument, message, tmp_path, cli_env):
    proc = subprocess.run([sys.executable, str(ROOT / "experiments/table1.py"), argument,
                           f"sweep_dir={tmp_path / 'sweep'}"], capture_output=True, text=True, timeout=120,
                          env=cli_env, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith(f"tagrank: error: {message}"), proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "sweep").exists()


def test_a_quick_table_never_lands_on_the_reference_results(tmp_path):
    table1 = table1_module()
    assert table1.results_dir(plan("quick=true"), "synthetic") == Path("results/quick/synthetic")
    assert table1.results_dir(plan(), "synthetic") == Path("results/synthetic")
    assert table1.results_dir(plan("quick=true", "results=/r"), "synthetic") == Path("/r/synthetic")
    # aggregate= of a sweep that quick=true made (its smoke overrides in every run) goes there too
    sweep = known_sweep(tmp_path)
    assert not table1.made_quick(runs.load_runs(sweep))
    for run in runs.load_runs(sweep):
        OmegaConf.save(OmegaConf.create([*table1.QUICK, f"seed={run.seed}"]), run.path / ".hydra/overrides.yaml")
    assert table1.made_quick(runs.load_runs(sweep))
    for run in runs.load_runs(sweep):  # made before data.image_size was renamed data.render_size: still quick
        given = [o.replace("data.render_size=", "data.image_size=") for o in table1.QUICK]
        OmegaConf.save(OmegaConf.create([*given, f"seed={run.seed}"]), run.path / ".hydra/overrides.yaml")
    assert "data.image_size=64" in given and table1.made_quick(runs.load_runs(sweep))
    assert table1.table_dir(plan(f"aggregate={sweep}"), runs.load_runs(sweep)) == Path("results/quick/pascal07")
    assert table1.table_dir(plan(f"aggregate={sweep}", "results=/r"), runs.load_runs(sweep)) == \
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
    assert set(table) == set(OmegaConf.load(Path(CONF_DIR) / "table1.yaml").quick_methods)  # quick's default
    # the deterministic solves run seed 0 only (table1.DETERMINISTIC), the others both seeds
    assert {m: r["seeds"] for m, r in table.items()} == {m: "1" if m in table1_module().DETERMINISTIC else "2" for m in table}
    for method in ("lstm", "svm", "svm_rank", "naive_rnn"):  # every learned method clears the floor
        assert float(table[method]["ndcg_ci_low"]) > float(table["frequency"]["ndcg_ci_high"]), method
    assert list((out / "wandb").glob("offline-run-*")) and "Ours (LSTM)" in proc.stdout
    # aggregate= re-reads the finished sweep (nothing runs): the same table, against another reference
    again = subprocess.run([sys.executable, str(ROOT / "experiments/table1.py"), f"aggregate={tmp_path / 'sweep'}",
                            f"results={tmp_path / 'again'}", "reference=svm"],
                           capture_output=True, text=True, env=cli_env, timeout=600, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    redone = {r["method"]: r for r in csv.DictReader((tmp_path / "again/synthetic/table1.csv").open())}
    assert {m: r["ndcg_mean"] for m, r in redone.items()} == {m: r["ndcg_mean"] for m, r in table.items()}
    assert redone["svm"]["delta_ndcg"] == "" and redone["lstm"]["delta_ndcg"] != ""


@pytest.mark.parametrize("method", config_options("model"))
def test_a_method_gets_the_fine_tuning_schedule_exactly_when_its_config_is_staged(method):
    """table1 gives finetune='s schedule (and finetune=none's frozen backbone) to the staged methods; it reads
    which they are from the configs, so a new staged method (lstm_attention) is not left on its own default
    schedule beside the LSTM. Checked against the composed model config: staged means finetune_after_steps."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={method}"])
    assert table1_module().fine_tunes(method) == ("finetune_after_steps" in cfg.model)


def test_a_setting_of_any_method_goes_to_the_runs():
    """model.* settings of a method other than the placeholder LSTM of table1.yaml (the SVM's C grid, the
    scorer's loss) reach the runs as written; Hydra would have refused them against the LSTM's keys."""
    given = plan("methods=[svm]", "seeds=1", "reference=svm", "model.C_grid=[0.03,0.1]", "++model.annotators=each")
    assert given.passthrough[-2:] == ["model.C_grid=[0.03,0.1]", "++model.annotators=each"]
    with pytest.raises(TagrankError, match="aggregate= re-reads finished runs, so model.C_grid=.0.03. would change"):
        plan("aggregate=/x", "model.C_grid=[0.03]")
