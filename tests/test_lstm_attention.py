"""model=lstm_attention: the paper's LSTM with attention over the spatial map. Its maths (the loss is the
paper's summed cross-entropy, each step attends where its own hidden state says, a step never depends
on later ones), then the whole path: the real Trainer on the synthetic set, the checkpoint read back by
tagrank-eval with the same metrics, tagrank-predict on photo files, and tagrank-export's files.
(The fast dev run and the one-epoch run of every registered model: tests/test_baselines.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tagrank.cli.export import export_tagger
from tagrank.cli.predict import Tagger, predict, unknown_targets
from tagrank.models.lstm_attention import LSTMAttention

from .conftest import TINY, compose_cfg, needs_shared, train_on_coco_mini
from .test_export import run_exported
from .test_predict import TEST_PHOTOS, eval_lists, predict_cfg
from .test_train import _eval_cli

NUM_TAGS, TOP_K = 12, 5


def untrained(**kwargs) -> LSTMAttention:
    torch.manual_seed(0)
    return LSTMAttention(NUM_TAGS, top_k=TOP_K, grid=2, **kwargs)


def maps(batch: int = 4) -> torch.Tensor:
    """Random maps [B, 1280, 2, 2] in float16, as the cache holds them."""
    return torch.randn(batch, 1280, 2, 2, generator=torch.Generator().manual_seed(1)).half()


def test_the_loss_is_the_summed_cross_entropy_of_each_list_over_the_batch():
    model = untrained().eval()  # no dropout: the same logits in both computations
    fmap = maps()
    target = torch.tensor([[3, 1, 4, -1], [5, -1, -1, -1], [2, 7, 0, 9], [-1, -1, -1, -1]])
    with torch.no_grad():
        logits = model(fmap, 4).log_softmax(-1)
    want = -sum(logits[b, t, target[b, t]] for b in range(4) for t in range(4) if target[b, t] >= 0) / 4
    assert model.loss({"features": fmap, "target": target}).item() == pytest.approx(want.item(), rel=1e-5)
    # No tag in the batch: zero, and still a gradient (a training step on it does nothing)
    empty = model.loss({"features": fmap, "target": torch.full((4, 3), -1)})
    assert empty.item() == 0 and empty.requires_grad


def test_each_step_attends_where_its_hidden_state_says_and_depends_on_no_later_step():
    model = untrained().eval()
    fmap = maps()
    weights: list[torch.Tensor] = []
    with torch.no_grad():
        long = model(fmap, 6, attention=weights)
        short = model(fmap, 3)
    torch.testing.assert_close(short, long[:, :3])  # training runs only a batch's longest list: the same logits
    alpha = torch.stack(weights, 1)  # [B, steps, cells]
    assert alpha.shape == (4, 6, 4)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(4, 6))
    assert (alpha[:, 1:] - alpha[:, :1]).abs().max() > 1e-3  # not one fixed pooling: it moves with h_{t-1}
    # The attention's parameters learn from the loss (the context reaches the LSTM), with and without v
    for pooled in (True, False):
        model = untrained(pooled_input=pooled).train()
        model.loss({"features": fmap, "target": torch.tensor([[1, 2, -1]] * 4)}).backward()
        for name in ("att_cells.weight", "att_hidden.weight", "att_score.weight", "cell_proj.weight", "position"):
            assert model.get_parameter(name).grad.abs().sum() > 0, (pooled, name)
        assert (model.proj.weight.grad is not None) == pooled


def test_ranks_distinct_tags_and_scores_them_with_the_step_softmax():
    model = untrained().eval()
    fmap = maps()
    batch = {"features": fmap, "target": torch.full((4, 1), -1)}
    with torch.no_grad():
        ids = model.rank(batch)
        logits = model(fmap, TOP_K)
        _, scores = model.scored_rank(batch)
    assert ids.shape == (4, TOP_K) and all(len(set(row)) == TOP_K for row in ids.tolist())
    assert torch.equal(ids[:, 0], logits[:, 0].argmax(-1))
    torch.testing.assert_close(scores, logits.softmax(-1).gather(-1, ids[..., None])[..., 0])
    # Beam search finds a list at least as likely (renormalised over the unused tags) as the greedy one
    beam = untrained(beam_width=4).eval()
    with torch.no_grad():
        found = beam.rank(batch)

    def log_likelihood(seq: torch.Tensor) -> torch.Tensor:
        used = torch.zeros(4, NUM_TAGS, dtype=torch.bool)
        total = torch.zeros(4)
        for t in range(TOP_K):
            logp = logits[:, t].masked_fill(used, float("-inf")).log_softmax(-1)
            total += logp.gather(1, seq[:, t:t + 1])[:, 0]
            used[torch.arange(4), seq[:, t]] = True
        return total

    assert (log_likelihood(found) >= log_likelihood(ids) - 1e-5).all()


def test_trains_on_synthetic_data_and_tagrank_eval_gives_the_same_metrics(tmp_path, cache_dir):
    """The real Trainer on the synthetic set's cached maps, then the real tagrank-eval on best.ckpt."""
    from tagrank.cli.train import train

    cfg = compose_cfg(TINY + ["model=lstm_attention", "model.grid=2"], tmp_path, cache_dir)
    train(cfg)
    trained = json.loads((tmp_path / "metrics.json").read_text())
    assert trained["metrics"]["n_images"] == 48
    assert list(cache_dir.rglob("*-map2x2.pt")), "the run read the map cache"
    model = LSTMAttention.load_from_checkpoint(tmp_path / "checkpoints/best.ckpt", map_location="cpu", weights_only=True)
    assert model.feature_grid == 2 and model.hparams.pooled_input
    again, _ = _eval_cli(tmp_path, cfg, tmp_path / "eval")
    losses = {k for k in trained["metrics"] if "loss" in k}
    assert {k: v for k, v in again["metrics"].items() if k not in losses} == \
        {k: v for k, v in trained["metrics"].items() if k not in losses}
    assert {k: again["metrics"][k] for k in losses} == pytest.approx({k: trained["metrics"][k] for k in losses}, rel=1e-5)


@needs_shared("coco-mini")
def test_predict_on_photo_files_gives_tagrank_eval_lists(tmp_path_factory, tmp_path, cache_dir, capsys):
    run, _ = train_on_coco_mini(tmp_path_factory, cache_dir, "frozen", "model=lstm_attention", "model.grid=2")
    out = tmp_path / "preds.jsonl"
    predict(predict_cfg(tmp_path, cache_dir, f"ckpt_path={run}/checkpoints/best.ckpt", f"images={TEST_PHOTOS}",
                        f"out={out}"))
    got = {r["image"]: r for r in map(json.loads, out.read_text().splitlines())}
    expected = eval_lists(run)  # computed from the cached maps; predict computes them from the photos
    assert len(expected) == 77
    for image, tags in expected.items():
        assert [t["tag"] for t in got[image]["tags"]] == tags, image
    assert "score = the softmax probability of the tag at its step" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_files_give_pytorchs_tags_and_scores(fmt, tmp_path):
    """At 128 px a Lite map is 4x4, pooled to 2x2: both formats; run by their own runtimes on 5 images
    (traced on 2)."""
    model = untrained().eval()
    tags = [f"tag{i}" for i in range(NUM_TAGS)]
    images = torch.randint(0, 256, (5, 3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_ids, want_scores = model.scored_rank({"image": images, "target": unknown_targets(images)})
    sidecar = export_tagger(Tagger(model, tags, 128, tmp_path / "untrained.ckpt"), fmt, tmp_path / f"tagger.{fmt}")
    ids, scores = run_exported(tmp_path / f"tagger.{fmt}", fmt, images)
    assert np.array_equal(ids, want_ids.numpy())
    np.testing.assert_allclose(scores, want_scores.numpy(), atol=1e-4)
    assert json.loads(sidecar.read_text())["method"] == "LSTMAttention"
