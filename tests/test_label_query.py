"""model=label_query's decoder: without self-attention (the default) a tag's score depends on its own
query and the image alone; with groups, on its group's query; the old layer (self_attention=true) is
still there and does mix the queries; a run with groups saves a checkpoint that rebuilds the model.
(Fast dev run, the plain checkpoint round trip, predict and export: tests/test_baselines.py and
tests/test_export.py, which run every model.)"""

from __future__ import annotations

import json

import pytest
import torch

from tagrank.cli.train import train
from tagrank.errors import TagrankError
from tagrank.models.label_query import LabelQueryDecoder
from tagrank.pipeline import attach_inputs, build_data

from .conftest import TINY, compose_cfg

NUM_TAGS = 9


def maps(batch: int = 3) -> torch.Tensor:
    """Random maps [B, 1280, 2, 2] in float16, as the cache holds them."""
    return torch.randn(batch, 1280, 2, 2, generator=torch.Generator().manual_seed(1)).half()


def moved_by_query(model: LabelQueryDecoder, query: int) -> torch.Tensor:
    """Which tags' scores [V] (bool, any image) change when one query's vector is changed."""
    model.eval()
    fmap = maps()
    with torch.no_grad():
        before = model(fmap)
        model.queries[query] += torch.randn(model.queries.shape[1], generator=torch.Generator().manual_seed(2))
        after = model(fmap)
    return ((after - before).abs() > 1e-6).any(0)


@pytest.mark.parametrize("layers", [1, 2])
def test_without_self_attention_a_tags_score_depends_on_its_own_query_only(layers):
    torch.manual_seed(0)
    model = LabelQueryDecoder(NUM_TAGS, grid=2, layers=layers)
    assert moved_by_query(model, 4).tolist() == [t == 4 for t in range(NUM_TAGS)]


def test_with_self_attention_every_query_moves_every_score():
    """The old layer (nn.TransformerDecoderLayer), kept as self_attention=true: what the test above
    rules out happens there."""
    torch.manual_seed(0)
    model = LabelQueryDecoder(NUM_TAGS, grid=2, self_attention=True)
    assert moved_by_query(model, 4).all()


def test_with_groups_a_query_scores_its_own_tags_round_robin():
    """4 groups for 9 tags: query q reads tags q, q + 4, q + 8; every query has at least two tags."""
    torch.manual_seed(0)
    model = LabelQueryDecoder(NUM_TAGS, grid=2, groups=4)
    assert model.queries.shape[0] == 4
    for q in range(4):
        assert moved_by_query(model, q).nonzero().flatten().tolist() == list(range(q, NUM_TAGS, 4))
    # one group of all the tags: a single query, every score from it
    assert moved_by_query(LabelQueryDecoder(NUM_TAGS, grid=2, groups=1), 0).all()


def test_more_groups_than_tags_is_refused():
    with pytest.raises(TagrankError, match=r"model.groups=10 is more than the 9 tags"):
        LabelQueryDecoder(NUM_TAGS, groups=10)


def test_a_run_with_groups_reloads_from_its_checkpoint(tmp_path, cache_dir):
    """The real Trainer with model.groups=5 (the synthetic set has more tags than that); best.ckpt rebuilds
    the model with its groups, and it ranks the test images as the run wrote them."""
    cfg = compose_cfg(TINY + ["model=label_query", "model.grid=2", "model.groups=5", "trainer.max_epochs=1"],
                      tmp_path, cache_dir)
    train(cfg)
    model = LabelQueryDecoder.load_from_checkpoint(tmp_path / "checkpoints/best.ckpt", map_location="cpu",
                                                   weights_only=True)
    assert model.hparams.groups == 5 and not model.hparams.self_attention and model.queries.shape[0] == 5
    dm = build_data(cfg)
    attach_inputs(cfg, dm, model, need_images=False)
    rows = dm.rows("test")
    with torch.no_grad():
        ranked = model.eval().rank({"features": dm.features[rows], "target": dm.targets[rows]})
    written = [json.loads(line)["predicted"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [dm.vocab.decode(r) for r in ranked.tolist()] == written
