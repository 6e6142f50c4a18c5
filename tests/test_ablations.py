"""Issue 15's ablations: set against order, which relevance, which training order (experiments/ablations.py)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from tagrank.metrics import RELEVANCES, ndcg_at_k
from tagrank.report import ablations, runs, stats

from .conftest import ROOT, TINY
from .test_table1 import write_run

TRUTH = [f"t{i}" for i in range(6)]
MISS = [f"u{i}" for i in range(10)]
IMAGES = ["a.png", "b.png", "c.png"]


def mean_ndcg(predicted: list[str], truth: list[str], relevance: str = "linear") -> float:
    return float(np.mean([ndcg_at_k(predicted, truth, k, relevance) for k in range(1, 11)]))


def test_found_tags_move_to_the_front_in_human_order():
    # c and a found (a twice: the repeat stays a miss), x and y are not in the ground truth.
    best = ablations.found_in_human_order(["x", "c", "a", "y", "a"], ["a", "b", "c", "d"], 10)
    assert best == ["a", "c", "x", "y", "a"]
    assert ablations.found_in_human_order(["x", "c", "a"], ["a", "b", "c"], 2) == ["c", "x"]  # only the first k count
    assert ablations.found_in_human_order(TRUTH, TRUTH, 10) == TRUTH  # a perfect list is its own best order


def test_the_best_order_of_what_was_found_never_scores_lower():
    rng = random.Random(0)
    vocab = [f"v{i}" for i in range(15)]
    for _ in range(300):
        truth = rng.sample(vocab, rng.randint(1, 8))
        predicted = [rng.choice(vocab) for _ in range(rng.randint(0, 10))]  # repeats and short lists too
        best = ablations.found_in_human_order(predicted, truth, 10)
        for relevance in RELEVANCES:
            for k in range(1, 11):
                assert ndcg_at_k(best, truth, k, relevance) >= ndcg_at_k(predicted, truth, k, relevance) - 1e-12


# method -> seed -> its predicted list for each image. lstm: right; svm: the right tags, reversed, then misses;
# svm_rank: the top tag only; naive_rnn: every tag but the top one, in order.
LISTS = {
    "lstm": {0: [TRUTH + MISS[:4]] * 3, 1: [TRUTH + MISS[:4], TRUTH[::-1] + MISS[:4], TRUTH + MISS[:4]]},
    "svm": {0: [TRUTH[::-1] + MISS[:4]] * 3},
    "svm_rank": {0: [TRUTH[:1] + MISS[:9]] * 3},
    "naive_rnn": {0: [TRUTH[1:] + MISS[:5]] * 3},
}


def hand_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    job = 0
    for method, seeds in LISTS.items():
        for seed, lists in seeds.items():
            preds = [{"image": img, "truth": TRUTH, "predicted": pred} for img, pred in zip(IMAGES, lists)]
            write_run(sweep / "frozen" / str(job), method, seed, "synthetic", preds)
            job += 1
    return sweep


def test_set_against_order_on_a_hand_case(tmp_path):
    scores = stats.image_scores(runs.load_runs(hand_sweep(tmp_path)))
    rows = {r.method: r for r in ablations.set_vs_order(scores, n_boot=200)}
    reversed_ = mean_ndcg(TRUTH[::-1] + MISS[:4], TRUTH)
    lstm, svm = rows["lstm"], rows["svm"]
    assert lstm.seeds == [0, 1] and lstm.ordered == 1.0 and lstm.ordered_ci == (1.0, 1.0)
    assert lstm.ndcg == pytest.approx((3 + 2 + reversed_) / 6) and lstm.gap == pytest.approx(1 - lstm.ndcg)
    assert reversed_ < 1.0 and svm.ndcg == pytest.approx(reversed_)
    assert svm.ordered == 1.0 and svm.gap == pytest.approx(1 - reversed_)
    assert svm.gap_ci == pytest.approx((1 - reversed_,) * 2)
    # A list already in human order has nothing to gain: its NDCG is the best for the tags it found.
    for method, pred in (("svm_rank", TRUTH[:1] + MISS[:9]), ("naive_rnn", TRUTH[1:] + MISS[:5])):
        assert mean_ndcg(pred, TRUTH) < 1.0
        assert rows[method].ndcg == rows[method].ordered == pytest.approx(mean_ndcg(pred, TRUTH))
        assert rows[method].gap == 0.0
    for r in rows.values():
        assert r.ordered >= r.ndcg and r.gap_ci[0] >= 0.0


def test_which_relevance_on_a_hand_case(tmp_path):
    scores = stats.image_scores(runs.load_runs(hand_sweep(tmp_path)))
    result = ablations.relevance_ablation(scores, n_boot=200)
    for rel in RELEVANCES:
        assert result.ndcg[rel]["svm_rank"] == pytest.approx(mean_ndcg(TRUTH[:1] + MISS[:9], TRUTH, rel))
        assert result.ndcg[rel]["naive_rnn"] == pytest.approx(mean_ndcg(TRUTH[1:] + MISS[:5], TRUTH, rel))
    top, rest = (mean_ndcg(TRUTH[:1] + MISS[:9], TRUTH, "binary"), mean_ndcg(TRUTH[1:] + MISS[:5], TRUTH, "binary"))
    # Linear relevance weighs the top tag most (2^6 - 1 = 63 against 31 for the next): finding it alone beats
    # finding the other five, which binary relevance counts as five hits against one.
    assert result.ranking["linear"].index("svm_rank") < result.ranking["linear"].index("naive_rnn") and top < rest
    assert result.ranking["binary"].index("naive_rnn") < result.ranking["binary"].index("svm_rank")
    assert result.ranking["linear"][0] == "lstm" and result.swaps["linear"] == []
    swapped = {(a, b) for a, b, _ in result.swaps["binary"]}
    assert ("naive_rnn", "svm_rank") in swapped and all(lo <= hi for _, _, (lo, hi) in result.swaps["binary"])
    md = ablations.relevance_markdown(result, "synthetic", len(scores.images), "python x")
    assert md.startswith("<!-- python x -->\n# Which relevance on `synthetic`")
    assert "- `binary`: the ranking changes:" in md and "Now Naive-RNN + masking above SVM-rank (+" in md
    assert sum(line.startswith("| ") for line in md.splitlines()) == 1 + len(LISTS)
    # The LSTM is ahead of the SVM under every grade (it finds the same tags, mostly in the right order).
    two = stats.image_scores([r for r in runs.load_runs(hand_sweep(tmp_path / "two")) if r.method in ("lstm", "svm")])
    md = ablations.relevance_markdown(ablations.relevance_ablation(two, n_boot=200), "synthetic", 3, "python x")
    assert "- `inverse_log`: the same ranking as `linear`." in md and "- `binary`: the same ranking as `linear`." in md


def run_script(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments/ablations.py"), *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=600)


def test_the_table1_ablations_by_one_command(tmp_path, cli_env):
    sweep = hand_sweep(tmp_path)
    proc = run_script([f"sweep={sweep}", f"results={tmp_path / 'results'}"], cli_env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "results/synthetic"
    for name in ("ablation_set_vs_order.md", "ablation_relevance.md"):
        lines = (out / name).read_text().splitlines()
        assert lines[0] == f"<!-- python experiments/ablations.py sweep={sweep} results={tmp_path / 'results'} -->"
        rows = [line for line in lines if line.startswith("| ") and not line.startswith("| Method")]
        assert [r.split(" | ")[0] for r in rows] == ["| SVM", "| SVM-rank", "| Naive-RNN + masking", "| Ours (LSTM)"]
    assert "| SVM | " + f"{mean_ndcg(TRUTH[::-1] + MISS[:4], TRUTH):.4f} | 1.0000 [1.0000, 1.0000] | +" in \
        (out / "ablation_set_vs_order.md").read_text()


SLOW = pytest.mark.slow  # each case starts the script (~5 s of imports): three stay in the fast suite


@pytest.mark.parametrize("args, message", [
    ([], "give sweep=<a Table 1 sweep directory>, or orders=true"),
    pytest.param(["orders=true", "seeds=0"], "seeds=0 is out of range", marks=SLOW),
    pytest.param(["orders=maybe"], "orders='maybe'", marks=SLOW),
    (["sweeep=x"], "sweeep"),  # a misspelt setting: Hydra's one line
    pytest.param(["sweep={tmp}", "model=lstm"], "'model=lstm' is not a setting of the Table 1 ablations", marks=SLOW),
    pytest.param(["sweep={tmp}/none"], "not a directory", marks=SLOW),
    (["orders=true", "aggregate={tmp}", "seeds=2", "trainer.max_epochs=1"],
     "aggregate= re-reads finished runs, so seeds=2 trainer.max_epochs=1 would change nothing; "
     "with aggregate= pass only results"),
])
def test_ablations_reject_bad_arguments(args, message, tmp_path, cli_env):
    proc = run_script([a.format(tmp=tmp_path) for a in args], cli_env, tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr[-2000:])


def test_the_order_ablation_trains_one_run_per_order(tmp_path, cli_env):
    """The real multirun of tagrank-train on tiny synthetic data, then the table (about 40 s on 2 cores)."""
    tiny = [s for s in TINY if not s.startswith("trainer.max_epochs")] + ["trainer.max_epochs=1"]
    proc = run_script(["orders=true", "seeds=1", f"sweep_dir={tmp_path / 'sweep'}", f"results={tmp_path / 'results'}",
                       *tiny], cli_env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = runs.load_runs(tmp_path / "sweep")
    configs = [OmegaConf.load(r.path / ".hydra/config.yaml") for r in found]
    assert sorted(c.data.train_order for c in configs) == sorted(ablations.TRAIN_ORDERS)
    assert all(c.model.finetune_after_steps == 0 and c.seed == 0 and c.data.n_train == 96 for c in configs)
    md = (tmp_path / "results/synthetic/ablation_order.md").read_text()
    rows = [line.split(" | ")[0][2:] for line in md.splitlines()
            if line.startswith("| ") and "Training order" not in line]
    assert rows == list(ablations.TRAIN_ORDERS.values())
    assert "| human (the annotators' order) |" in md and md.splitlines()[-4].endswith("| – |")
