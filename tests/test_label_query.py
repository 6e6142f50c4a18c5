"""model=label_query's decoder: without self-attention (the default) a tag's score depends on its own
query and the image alone; with groups, on its group's query; the old layer (self_attention=true) is
still there and does mix the queries; a run with groups saves a checkpoint that rebuilds the model; a
checkpoint written before self_attention and groups existed still loads, ranks, predicts and resumes.
(Fast dev run, the plain checkpoint round trip, predict and export: tests/test_baselines.py and
tests/test_export.py, which run every model.)"""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn

from tagrank.cli.train import train
from tagrank.errors import TagrankError
from tagrank.models.label_query import LabelQueryDecoder
from tagrank.models.listwise import ListwiseTagger
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


def ranks_as_written(cfg, model, run):
    """Assert the reloaded model ranks the test images as the run's predictions.jsonl says; its data module."""
    dm = build_data(cfg)
    attach_inputs(cfg, dm, model, need_images=False)
    rows = dm.rows("test")
    with torch.no_grad():
        ranked = model.eval().rank({"features": dm.features[rows], "target": dm.targets[rows]})
    written = [json.loads(line)["predicted"] for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert [dm.vocab.decode(r) for r in ranked.tolist()] == written
    return dm


def test_a_run_with_groups_reloads_from_its_checkpoint(tmp_path, cache_dir):
    """The real Trainer with model.groups=5 (the synthetic set has more tags than that); best.ckpt rebuilds
    the model with its groups, and it ranks the test images as the run wrote them."""
    cfg = compose_cfg(TINY + ["model=label_query", "model.grid=2", "model.groups=5", "trainer.max_epochs=1"],
                      tmp_path, cache_dir)
    train(cfg)
    model = LabelQueryDecoder.load_from_checkpoint(tmp_path / "checkpoints/best.ckpt", map_location="cpu",
                                                   weights_only=True)
    assert model.hparams.groups == 5 and not model.hparams.self_attention and model.queries.shape[0] == 5
    dm = ranks_as_written(cfg, model, tmp_path)


class OldLabelQueryDecoder(ListwiseTagger):
    """label_query as it was before 3a82a8b (git show 3a82a8b^:tagrank/models/label_query.py), its layout and
    forward as they were: nn.TransformerDecoder (self-attention among the tag queries), read_out [V, d], no
    self_attention or groups hyperparameter. The optimiser and schedule hyperparameters go to ListwiseTagger
    through the hparams, as they did then."""

    def __init__(self, num_tags: int, backbone: str = "efficientnet_lite0", grid: int = 4, d_model: int = 256,
                 heads: int = 4, layers: int = 1, dropout: float = 0.1, loss: str = "both", lr: float = 4e-4,
                 betas: tuple[float, float] = (0.8, 0.999), eps: float = 1e-8, lr_factor: float = 0.5,
                 lr_patience: int = 2, finetune_after_steps: int = 7500, finetune_lr: float = 1e-5,
                 finetune_weight_decay: float = 1e-3, top_k: int = 10, relevance: str = "linear",
                 annotators: str = "merged") -> None:
        super().__init__(num_tags, backbone, top_k, relevance)
        self.save_hyperparameters()
        self.feature_grid = grid
        self.proj = nn.Linear(self.backbone.map_dim, d_model)
        self.position = nn.Parameter(torch.randn(grid * grid, d_model) * 0.02)
        self.queries = nn.Parameter(torch.randn(num_tags, d_model) * 0.02)
        layer = nn.TransformerDecoderLayer(d_model, heads, 4 * d_model, dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.read_out = nn.Parameter(torch.randn(num_tags, d_model) * d_model ** -0.5)
        self.read_bias = nn.Parameter(torch.zeros(num_tags))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        cells = self.proj(fmap.float().flatten(2).transpose(1, 2)) + self.position
        out = self.decoder(self.queries.expand(cells.shape[0], -1, -1), cells)
        return (out * self.read_out).sum(-1) + self.read_bias


def test_a_checkpoint_from_before_self_attention_existed_loads_predicts_and_resumes(tmp_path, cache_dir):
    """Trained for real with the old class (the Trainer's own checkpoint, hparams without self_attention or
    groups), its tagrank_class then set to the class that wrote it then: today's class rebuilds it with its
    old layer (tagrank.checkpoint.ADDED_HPARAMS) and ranks the test images as the old run wrote them;
    tagrank-predict loads it; a resume with the default config is refused naming model.self_attention=true,
    and with it goes on."""
    from tagrank.cli.predict import load_tagger

    old_cfg = [*TINY, "model=label_query", "model.grid=2", "trainer.max_epochs=1"]
    cfg = compose_cfg([*old_cfg, f"model._target_={__name__}.OldLabelQueryDecoder"], tmp_path / "old", cache_dir)
    with open_dict(cfg):  # the old model config had neither
        del cfg.model.self_attention, cfg.model.groups
    train(cfg)
    for name in ("best", "last"):
        path = tmp_path / f"old/checkpoints/{name}.ckpt"
        saved = torch.load(path, map_location="cpu", weights_only=True)
        assert "self_attention" not in saved["hyper_parameters"] and saved["state_dict"]["read_out"].dim() == 2
        saved["tagrank_class"] = "tagrank.models.label_query.LabelQueryDecoder"
        torch.save(saved, path)

    best = tmp_path / "old/checkpoints/best.ckpt"
    model = LabelQueryDecoder.load_from_checkpoint(best, map_location="cpu", weights_only=True)
    assert model.hparams.self_attention and model.hparams.groups is None
    assert isinstance(model.decoder, nn.TransformerDecoder)
    dm = ranks_as_written(cfg, model, tmp_path / "old")

    tagger = load_tagger(OmegaConf.create({"ckpt_path": str(best), "top_k": None, "stop": False}))
    assert isinstance(tagger.model.decoder, nn.TransformerDecoder) and tagger.tags == list(dm.vocab.tags)

    last = f"ckpt_path={tmp_path}/old/checkpoints/last.ckpt"
    refused = r"\(model.self_attention=True there, False here\): resume with .*, model.self_attention=true$"
    with pytest.raises(TagrankError, match=refused):
        train(compose_cfg([*old_cfg, last], tmp_path / "resume", cache_dir))
    train(compose_cfg([*old_cfg, last, "model.self_attention=true", "trainer.max_epochs=2"], tmp_path / "resume",
                      cache_dir))
    resumed = torch.load(tmp_path / "old/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["hyper_parameters"]["self_attention"] is True
