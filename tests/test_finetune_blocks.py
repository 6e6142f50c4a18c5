"""backbone.finetune_blocks=N: the last N blocks fine-tuned on the frozen trunk's cached outputs give the
weights that fine-tuning them through the whole network gives, and the model is used like any other."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch

from tagrank.cli.export import export
from tagrank.cli.predict import predict
from tagrank.cli.train import train
from tagrank.data.datamodule import image_transform, load_image
from tagrank.data.features import feature_cache_path
from tagrank.data.images import ImageTransform
from tagrank.errors import TagrankError
from tagrank.models.backbones import load_pretrained, resolve_weights
from tagrank.pipeline import attach_inputs, build_data, build_model, build_trainer, check_backbone, state_digest

from .conftest import TINY, compose_cfg
from .test_export import run_exported

BLOCKS = 3
# The paper's schedule shortened: one step on cached features, then four with the top joining (at a
# learning rate that moves it visibly in four steps), no validation.
SHORT = TINY + [f"backbone.finetune_blocks={BLOCKS}", "model=lstm", "model.finetune_after_steps=1",
                "model.finetune_lr=0.001", "trainer.max_steps=5", "trainer.max_epochs=-1",
                "trainer.limit_val_batches=0", "test=false", "+callbacks.inputs._target_=tests.probes.BatchInputs"]


def fit(tmp_path, cache_dir):
    """Train SHORT with the real Trainer and callbacks, as tagrank-train does (train.py's steps)."""
    cfg = compose_cfg(SHORT, tmp_path, cache_dir)
    L.seed_everything(cfg.seed, workers=True)
    dm = build_data(cfg)
    model = build_model(cfg, dm.num_tags)
    with torch.random.fork_rng(devices=[]):
        attach_inputs(cfg, dm, model, need_images=True)
    build_trainer(cfg).fit(model, datamodule=dm)
    return model, (tmp_path / "batch_inputs.txt").read_text().split()


def test_the_cached_trunk_gives_the_weights_of_fine_tuning_through_the_whole_network(tmp_path, cache_dir, monkeypatch):
    cached, inputs = fit(tmp_path / "cached", cache_dir)
    with monkeypatch.context() as m:
        # What a transform with random augmentation says: attach_inputs then serves images, and the same N
        # blocks train through the whole (otherwise frozen) network: the reference.
        m.setattr(ImageTransform, "deterministic", False)
        whole, whole_inputs = fit(tmp_path / "whole", cache_dir)
    # The trunk (or the images) from the first step: the switch at step 1 is within the batches fetched ahead.
    assert inputs == [f"{s}:trunk" for s in range(5)]
    assert whole_inputs == [f"{s}:image" for s in range(5)]

    pretrained = type(cached.backbone)()
    load_pretrained(pretrained, resolve_weights("efficientnet_lite0", None))
    start = pretrained.state_dict()
    first_top = len(pretrained._blocks) - BLOCKS
    top = {k for k in start if k.startswith(("_conv_head.", "_bn1.")) or
           (k.startswith("_blocks.") and int(k.split(".")[1]) >= first_top)}
    mine, theirs = cached.state_dict(), whole.state_dict()
    assert mine.keys() == theirs.keys()
    moved = []
    for key, value in start.items():
        a, b = mine[f"backbone.{key}"], theirs[f"backbone.{key}"]
        if key in top and value.is_floating_point() and "running" not in key:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=key)  # equal bit for bit on x86 AVX2
            moved.append(not torch.equal(a, value))
        else:  # the trunk, BatchNorm statistics and the unused classifier stay pretrained, bit for bit
            assert torch.equal(a, value) and torch.equal(b, value), key
    assert all(moved) and len(moved) == 3 * 9 + 3  # every trained weight of 3 blocks and the head moved
    for key in (k for k in mine if not k.startswith("backbone.")):  # the LSTM on top
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5, atol=1e-7, msg=key)

    # The trunk cache: float32, one [C, H, W] map per image at the input of block -N (block 13: 192 channels
    # at 1/32 of the image size), keyed like the features.
    cfg = compose_cfg(SHORT, tmp_path, cache_dir)
    dm = build_data(cfg)
    path = feature_cache_path(cache_dir, dm.name, "efficientnet_lite0", state_digest(pretrained), 64, top_blocks=BLOCKS)
    assert path.is_file() and path.with_name(path.name + ".check").is_file()
    trunk = torch.load(path, weights_only=True)["features"]
    channels = pretrained._blocks[first_top]._depthwise_conv.in_channels // 6
    assert trunk.dtype == torch.float32 and trunk.shape == (len(dm.records), channels, 2, 2)  # 64 px / 32


def test_train_checkpoint_predict_export(tmp_path, cache_dir):
    """A tiny run with finetune_blocks: its best checkpoint holds the whole fine-tuned backbone, and
    tagrank-predict, running that backbone on the photos, gives the lists the run's test wrote (which it
    computed on the cached trunk); so does the exported model."""
    run = tmp_path / "run"
    cfg = compose_cfg(TINY + ["backbone.finetune_blocks=2", "model=scorer", "model.finetune_after_steps=2",
                              "model.finetune_lr=0.001", "trainer.max_steps=6", "trainer.max_epochs=-1",
                              "trainer.val_check_interval=3", "trainer.check_val_every_n_epoch=null",
                              "callbacks.early_stopping=null"], run, cache_dir)
    train(cfg)
    ckpt = torch.load(run / "checkpoints/best.ckpt", map_location="cpu", weights_only=True)
    assert bool(ckpt["state_dict"]["backbone_finetuned"]) and ckpt["tagrank_settings"]["backbone.finetune_blocks"] == 2
    written = {json.loads(line)["image"]: json.loads(line)["predicted"]
               for line in (run / "predictions.jsonl").read_text().splitlines()}
    dm = build_data(cfg)
    folder = tmp_path / "photos"
    folder.mkdir()
    names = {}  # the test photos in one folder, under names that say which record each is
    for n, row in enumerate(dm.rows("test")):
        names[f"{n:03d}{dm.paths[row].suffix}"] = dm.records[row].image
        (folder / f"{n:03d}{dm.paths[row].suffix}").symlink_to(dm.paths[row])
    got = predict(compose_cfg([f"ckpt_path={run}/checkpoints/best.ckpt", f"images={folder}"], tmp_path / "predict",
                              cache_dir, config_name="predict"))
    assert len(got) == len(written) == 48
    for row in got:
        assert [t["tag"] for t in row["tags"]] == written[names[row["image"].rsplit("/", 1)[-1]]], row["image"]

    # The exported model (the whole backbone inside) gives predict's tags and scores on the same photos.
    out = tmp_path / "tagger.pt"
    export(compose_cfg([f"ckpt_path={run}/checkpoints/best.ckpt", "format=torchscript", f"out={out}"],
                       tmp_path / "export", cache_dir, config_name="export"))
    resize = image_transform(cfg.backbone.image_size, (0.5,) * 3, (0.5,) * 3).resize
    images = torch.stack([resize(load_image(row["image"])).as_subclass(torch.Tensor) for row in got])
    ids, scores = run_exported(out, "torchscript", images)
    tags = json.loads((tmp_path / "tagger.pt.json").read_text())["tags"]
    for row, row_ids, row_scores in zip(got, ids, scores):
        assert [tags[i] for i in row_ids] == [t["tag"] for t in row["tags"]]
        np.testing.assert_allclose(row_scores, [t["score"] for t in row["tags"]], atol=1e-4)


@pytest.mark.parametrize("overrides, message", [
    (["backbone.finetune_blocks=0"], "backbone.finetune_blocks=0 is out of range"),
    (["backbone.finetune_blocks=17"], "EfficientNetLite0 has 16 blocks; expected 1 to 16"),
    (["backbone=vgg16", "backbone.finetune_blocks=2"], "backbone=vgg16 has no blocks to split"),
])
def test_bad_values_are_one_line(overrides, message, tmp_path, cache_dir):
    with pytest.raises(TagrankError, match=message):
        check_backbone(compose_cfg(overrides, tmp_path, cache_dir))


def test_a_run_resumed_after_the_switch_goes_on_training_the_top_on_the_trunk(tmp_path, cache_dir):
    """Resumed from last.ckpt after the switch: the same top is trainable again, with its optimiser group
    and Adam state restored, and it goes on training on the cached trunk; the trunk stays pretrained."""
    run = [f"backbone.finetune_blocks={BLOCKS}", "model=lstm", "model.finetune_after_steps=2", "model.finetune_lr=0.001",
           "trainer.max_epochs=-1", "trainer.limit_val_batches=0", "test=false",
           "callbacks.step_checkpoint.every_n_train_steps=1", "+callbacks.inputs._target_=tests.probes.BatchInputs"]
    cut = tmp_path / "cut"
    train(compose_cfg(TINY + run + ["trainer.max_steps=4"], cut, cache_dir))
    at4 = torch.load(cut / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    train(compose_cfg(TINY + run + ["trainer.max_steps=7", f"ckpt_path={cut}/checkpoints/last.ckpt"],
                      tmp_path / "resumed", cache_dir))
    at7 = torch.load(cut / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert (at4["global_step"], at7["global_step"]) == (4, 7)
    assert (cut / "batch_inputs.txt").read_text().split()[4:] == [f"{s}:trunk" for s in range(4, 7)]
    groups = at7["optimizer_states"][0]["param_groups"]
    assert len(groups) == 2 and len(groups[1]["params"]) == 3 * 9 + 3  # the top's weights, nothing below
    state = at7["optimizer_states"][0]["state"]
    assert {float(state[i]["step"]) for i in groups[1]["params"]} == {5.0}  # steps 2-6: Adam's state went on
    first_top = 16 - BLOCKS
    for key, value in at7["state_dict"].items():
        if key.startswith("backbone._blocks.") and "running" not in key and value.is_floating_point():
            trained = int(key.split(".")[2]) >= first_top
            assert torch.equal(value, at4["state_dict"][key]) != trained, key
