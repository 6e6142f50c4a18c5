"""tagrank-export: the ONNX file (run by ONNX Runtime) and the TorchScript file (torch.jit.load) give the
PyTorch model's tags and scores, for every method, on any batch size."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from tagrank.data.datamodule import image_transform, load_image
from tagrank.errors import TagrankError
from tagrank.cli.export import export, export_tagger
from tagrank.models.frequency import FrequencyPrior
from tagrank.models.label_query import LabelQueryDecoder
from tagrank.models.lstm import LSTMTagger
from tagrank.models.naive_rnn import NaiveRNN
from tagrank.models.scorer import ListwiseScorer
from tagrank.models.svm import LinearSVM
from tagrank.cli.predict import Tagger, predict, unknown_targets

from .conftest import COCO, compose_cfg, needs_shared

NUM_TAGS, TOP_K, SIZE = 12, 5, 32


def run_exported(path: Path, fmt: str, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The exported file run by its own runtime, as someone without tagrank would."""
    if fmt == "onnx":
        onnx.checker.check_model(str(path), full_check=True)  # a valid ONNX model, its shapes inferred
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ids, scores = session.run(["ids", "scores"], {"images": images.numpy()})
        return ids, scores
    ids, scores = torch.jit.load(str(path))(images)
    return ids.numpy(), scores.numpy()


def untrained(method: str) -> torch.nn.Module:
    """Each method with random weights (what is checked is the maths, the same for any weights)."""
    torch.manual_seed(0)
    if method == "frequency":
        model = FrequencyPrior(NUM_TAGS, top_k=TOP_K)
        model.counts.copy_(torch.tensor([9, 3, 3, 7, 0, 1, 3, 12, 2, 2, 5, 1]))  # ties: broken by tag id
        return model
    if method == "svm":
        model = LinearSVM(NUM_TAGS, C=1.0, top_k=TOP_K)
        torch.nn.init.normal_(model.linear.weight, std=1.0)
        return model
    if method in ("lstm", "lstm_beam"):
        return LSTMTagger(NUM_TAGS, top_k=TOP_K, beam_width=3 if method == "lstm_beam" else 1)
    if method == "naive_rnn_beam":
        return NaiveRNN(NUM_TAGS, top_k=TOP_K, beam_width=3)
    if method == "scorer":
        return ListwiseScorer(NUM_TAGS, top_k=TOP_K)
    if method == "label_query":
        return LabelQueryDecoder(NUM_TAGS, top_k=TOP_K, grid=2, layers=2)
    if method == "label_query_self_attention":  # the old layer, nn.TransformerDecoder (model.self_attention=true)
        return LabelQueryDecoder(NUM_TAGS, top_k=TOP_K, grid=1, self_attention=True)
    if method == "label_query_groups":  # grid 1: the 1x1 map at SIZE px exports to ONNX too
        return LabelQueryDecoder(NUM_TAGS, top_k=TOP_K, grid=1, groups=5)
    if method == "naive_rnn_ending":  # a captioning decoder whose lists all end at once: all -1, scores 0
        model = NaiveRNN(NUM_TAGS, top_k=TOP_K, decoding="captioning")
        with torch.no_grad():
            model.out.bias[model.end] = 1e3
        return model
    return NaiveRNN(NUM_TAGS, top_k=TOP_K, decoding=method.removeprefix("naive_rnn_"))


# svm_rank ranks and exports by LinearSVM's code (only its training loss differs): not repeated here. Each
# export traces the whole backbone (seconds): TorchScript for every method and ONNX for the captioning
# decoder (the one with an early stop) in the fast suite, ONNX for the others in the slow one (the LSTM's
# ONNX file is checked on real photos below).
SLOW = pytest.mark.slow


@pytest.mark.parametrize("method, formats", [
    ("lstm", ["torchscript"]), ("naive_rnn_masked", ["torchscript"]), ("svm", ["torchscript"]),
    ("frequency", ["torchscript"]), ("naive_rnn_captioning", ["torchscript", "onnx"]),
    ("naive_rnn_ending", ["torchscript"]), ("lstm_beam", ["torchscript"]), ("scorer", ["torchscript"]),
    ("label_query", ["torchscript"]), ("label_query_groups", ["torchscript", "onnx"]),
    ("label_query_self_attention", ["torchscript", "onnx"]),
    pytest.param("naive_rnn_beam", ["torchscript"], marks=SLOW), pytest.param("scorer", ["onnx"], marks=SLOW),
    pytest.param("naive_rnn_masked", ["onnx"], marks=SLOW), pytest.param("svm", ["onnx"], marks=SLOW),
    pytest.param("frequency", ["onnx"], marks=SLOW),
])
def test_exported_files_give_pytorchs_tags_and_scores(method, formats, tmp_path):
    model = untrained(method).eval()
    tags = [f"tag{i}" for i in range(NUM_TAGS)]
    images = torch.randint(0, 256, (5, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_ids, want_scores = model.scored_rank({"image": images, "target": unknown_targets(images)})
        assert torch.equal(want_ids, model.rank({"image": images, "target": unknown_targets(images)}))
        assert (want_ids < 0).all() == (method == "naive_rnn_ending") and (want_scores[want_ids < 0] == 0).all()
        features = model.image_features({"image": images})
        torch.testing.assert_close(model.tag_scores(features, want_ids).masked_fill(want_ids < 0, 0), want_scores)
    for fmt in formats:
        name = f"tagger.{fmt}"
        sidecar = export_tagger(Tagger(model, tags, SIZE, tmp_path / "untrained.ckpt"), fmt, tmp_path / name)
        ids, scores = run_exported(tmp_path / name, fmt, images)  # batch 5; traced on 2
        assert np.array_equal(ids, want_ids.numpy()), fmt
        np.testing.assert_allclose(scores, want_scores.numpy(), atol=1e-4, err_msg=fmt)
        described = json.loads(sidecar.read_text())
        assert described["tags"] == tags and described["top_k"] == TOP_K
        assert described["input"]["shape"] == ["batch", 3, SIZE, SIZE] and described["input"]["dtype"] == "uint8"
        assert described["input"]["mean"] == list(model.backbone.mean)
        assert described["stop_rule"] == model.stop_rule() and described["stop_score"] is None
        # Both files refuse what the sidecar does not describe (the TorchScript file by its scripted check,
        # as ONNX Runtime does by the declared input) rather than giving other tags.
        wrong = {"dtype": images.float(), "size": torch.zeros((1, 3, 2 * SIZE, 2 * SIZE), dtype=torch.uint8),
                 "rank": images[0]}
        refusals = {"onnx": {"dtype": "Unexpected input data type", "size": "Got invalid dimensions", "rank": "Invalid rank"},
                    "torchscript": {"dtype": r"images: expected uint8 pixels 0\.\.255",
                                    "size": rf"images: expected shape \[batch, 3, {SIZE}, {SIZE}\] .*got \[1, 3, {2 * SIZE}, {2 * SIZE}\]",
                                    "rank": rf"images: expected shape .* got \[3, {SIZE}, {SIZE}\]"}}[fmt]
        for kind, message in refusals.items():
            with pytest.raises(Exception, match=message):
                run_exported(tmp_path / name, fmt, wrong[kind])
    if method == "scorer":  # validated: the sidecar gives its stop rule as a threshold on the scores output
        model.stop_threshold.fill_(float(want_scores[:, 2].median()))
        export_tagger(Tagger(model, tags, SIZE, tmp_path / "validated.ckpt"), formats[0], tmp_path / "validated")
        described = json.loads((tmp_path / "validated.json").read_text())
        assert described["stop_rule"] == model.stop_rule() and described["stop_score"] == float(model.stop_threshold)
        ids, scores = run_exported(tmp_path / "validated", formats[0], images)
        kept = np.where((scores >= described["stop_score"]) | (np.arange(TOP_K) == 0), ids, -1)
        with torch.no_grad():
            want_set = model.predicted_set({"image": images, "target": unknown_targets(images)}, want_ids)
        assert np.array_equal(kept, want_set.numpy()) and 0 < (kept >= 0).sum() < kept.size


@needs_shared("coco-mini")
def test_export_of_a_trained_checkpoint_on_real_photos(coco_run, tmp_path, cache_dir):
    run, _ = coco_run
    ckpt = run / "checkpoints/best.ckpt"
    photos = sorted((COCO / "val2017").iterdir())[:12]
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in photos:
        (folder / p.name).symlink_to(p)
    expected = predict(compose_cfg([f"ckpt_path={ckpt}", f"images={folder}", "top_k=6"], tmp_path / "predict",
                                   cache_dir, config_name="predict"))
    assert [r["image"] for r in expected] == [str(folder / p.name) for p in photos]
    for fmt, name in (("onnx", "tagger.onnx"), ("torchscript", "tagger.pt")):
        export(compose_cfg([f"ckpt_path={ckpt}", f"format={fmt}", f"out={tmp_path / name}", "top_k=6"],
                           tmp_path / "export", cache_dir, config_name="export"))
        described = json.loads((tmp_path / f"{name}.json").read_text())
        # The photos prepared as the sidecar says: the whole photo resized to the size, uint8 RGB, NCHW.
        size = described["input"]["shape"][-1]
        resize = image_transform(size, described["input"]["mean"], described["input"]["std"]).resize
        images = torch.stack([resize(load_image(p)).as_subclass(torch.Tensor) for p in photos])
        ids, scores = run_exported(tmp_path / name, fmt, images)
        for want, row_ids, row_scores in zip(expected, ids, scores):
            assert [described["tags"][i] for i in row_ids] == [t["tag"] for t in want["tags"]], fmt
            np.testing.assert_allclose(row_scores, [t["score"] for t in want["tags"]], atol=1e-4)


def test_bad_format_exits_2_with_one_line_and_missing_checkpoint_is_one_message(tmp_path, cli_env, cache_dir):
    out = tmp_path / "t.onnx"
    proc = subprocess.run([sys.executable, "-m", "tagrank.cli.export", f"ckpt_path={tmp_path / 'missing.ckpt'}",
                           "format=tflite", f"out={out}", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=cli_env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "tagrank: error: format='tflite': expected one of ['onnx', 'torchscript']"
    with pytest.raises(TagrankError, match="ckpt_path='/nowhere/best.ckpt' does not exist"):
        export(compose_cfg(["ckpt_path=/nowhere/best.ckpt", f"out={out}"], tmp_path / "run", cache_dir,
                           config_name="export"))
    with pytest.raises(TagrankError, match=r"beam search \(model.beam_width=3\) does not export to ONNX"):
        export_tagger(Tagger(untrained("lstm_beam"), [f"tag{i}" for i in range(NUM_TAGS)], SIZE, out), "onnx", out)
    with pytest.raises(TagrankError, match=r"^out='.*t\.pt': expected a name ending in \.onnx \(format=onnx\)$"):
        export(compose_cfg(["ckpt_path=/nowhere/best.ckpt", f"out={tmp_path / 't.pt'}"], tmp_path / "run", cache_dir,
                           config_name="export"))
    ckpt = tmp_path / "model.pt"  # a checkpoint whose name a TorchScript file could have: never written over
    ckpt.write_bytes(b"the user's checkpoint")
    with pytest.raises(TagrankError, match=r"^out='.*model\.pt' is the checkpoint it exports: name another file$"):
        export(compose_cfg([f"ckpt_path={ckpt}", "format=torchscript", f"out={ckpt}"], tmp_path / "run", cache_dir,
                           config_name="export"))
    assert ckpt.read_bytes() == b"the user's checkpoint"
    assert not out.exists() and not (tmp_path / "t.onnx.json").exists()


@pytest.mark.parametrize("where", ["proc", "folder", "sidecar folder", "read-only"])
def test_an_out_that_cannot_be_written_is_refused_before_the_model_is_read(where, tmp_path, cache_dir, request):
    if where == "proc":
        out, expected = Path("/proc/tagger.onnx"), "the folder /proc "
    elif where == "folder":
        out, expected = tmp_path / "tagger.onnx", "is a folder: name a file"
        out.mkdir()
    elif where == "sidecar folder":
        out, expected = tmp_path / "tagger.onnx", r"\.json' is a folder: name a file"
        (tmp_path / "tagger.onnx.json").mkdir()
    else:
        out, expected = request.getfixturevalue("read_only_folder") / "tagger.onnx", "is on a read-only file system"
    cfg = compose_cfg([f"ckpt_path={tmp_path}/missing.ckpt", f"out={out}"], tmp_path / "run", cache_dir,
                      config_name="export")
    with pytest.raises(TagrankError, match=rf"^out='{out}.*{expected}"):
        export(cfg)
    assert not list(tmp_path.glob("**/.tagger.onnx.*"))


@pytest.mark.parametrize("backbone", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_backbones_export_and_predict_the_same(backbone, tmp_path):
    """The scorer on each newer backbone (random weights: the maths is what is checked) exports to both
    formats and the files give PyTorch's tags and scores."""
    torch.manual_seed(0)
    model = ListwiseScorer(NUM_TAGS, backbone=backbone, top_k=TOP_K).eval()
    tags = [f"tag{i}" for i in range(NUM_TAGS)]
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_ids, want_scores = model.scored_rank({"image": images, "target": unknown_targets(images)})
    for fmt in ("torchscript", "onnx"):
        export_tagger(Tagger(model, tags, 64, tmp_path / "untrained.ckpt"), fmt, tmp_path / f"tagger.{fmt}")
        ids, scores = run_exported(tmp_path / f"tagger.{fmt}", fmt, images)
        assert np.array_equal(ids, want_ids.numpy()), fmt
        np.testing.assert_allclose(scores, want_scores.numpy(), atol=1e-4, err_msg=fmt)


def test_label_query_exports_to_onnx_where_its_map_pools_evenly(tmp_path):
    """At 128 px a Lite map is 4x4: pooled to 2x2 it exports to ONNX (and gives PyTorch's tags); a 1x1
    map (32 px) pooled to 2x2 cannot, and says so in one line."""
    model = untrained("label_query").eval()
    tags = [f"tag{i}" for i in range(NUM_TAGS)]
    images = torch.randint(0, 256, (3, 3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_ids, want_scores = model.scored_rank({"image": images, "target": unknown_targets(images)})
    export_tagger(Tagger(model, tags, 128, tmp_path / "untrained.ckpt"), "onnx", tmp_path / "tagger.onnx")
    ids, scores = run_exported(tmp_path / "tagger.onnx", "onnx", images)
    assert np.array_equal(ids, want_ids.numpy())
    np.testing.assert_allclose(scores, want_scores.numpy(), atol=1e-4)
    with pytest.raises(TagrankError, match=r"1x1 feature map pooled to 2x2 \(model.grid\) does not export to ONNX"):
        export_tagger(Tagger(model, tags, SIZE, tmp_path / "untrained.ckpt"), "onnx", tmp_path / "small.onnx")
    assert not (tmp_path / "small.onnx").exists()


EMPTY_BATCH_RUN = """
import sys, numpy as np, onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
ids, scores = session.run(["ids", "scores"], {"images": np.zeros((0, 3, int(sys.argv[2]), int(sys.argv[2])), np.uint8)})
print(ids.shape, scores.shape)
"""


@pytest.mark.parametrize("method", ["lstm", "naive_rnn_masked", "svm", "frequency", "scorer", "label_query"])
def test_an_empty_batch_gives_empty_lists_in_pytorch(method):
    """tagrank's own path (scored_rank, as tagrank-predict and the export call it) on 0 images: [0, K]
    lists, not the recurrent decoders' reshape error."""
    model = untrained(method).eval()
    images = torch.zeros((0, 3, SIZE, SIZE), dtype=torch.uint8)
    with torch.no_grad():
        ids, scores = model.scored_rank({"image": images, "target": unknown_targets(images)})
    assert ids.shape == scores.shape == (0, TOP_K) and ids.dtype == torch.long and scores.dtype == torch.float32


@pytest.mark.parametrize("method", ["lstm", "scorer"])
def test_what_an_exported_file_does_with_an_empty_batch_is_in_its_sidecar(method, tmp_path):
    """ONNX Runtime aborts the host process (SIGABRT) on 0 images with the LSTM: run in a child process so
    an abort cannot end pytest. The sidecar says what happens; TorchScript gives [0, K] for every method."""
    model = untrained(method).eval()
    tags = [f"tag{i}" for i in range(NUM_TAGS)]
    for fmt in ("onnx", "torchscript"):
        sidecar = export_tagger(Tagger(model, tags, SIZE, tmp_path / "untrained.ckpt"), fmt, tmp_path / f"t.{fmt}")
        said = json.loads(sidecar.read_text())["input"]["batch"]
        if fmt == "torchscript":
            ids, scores = run_exported(tmp_path / "t.torchscript", fmt, torch.zeros((0, 3, SIZE, SIZE), dtype=torch.uint8))
            assert ids.shape == scores.shape == (0, TOP_K) and said.startswith("0 or more images")
            continue
        proc = subprocess.run([sys.executable, "-c", EMPTY_BATCH_RUN, str(tmp_path / "t.onnx"), str(SIZE)],
                              capture_output=True, text=True, timeout=120)
        if said.startswith("1 or more images"):  # the LSTM: the warning is there because the abort is real
            assert method == "lstm" and proc.returncode == -signal.SIGABRT, (proc.returncode, proc.stderr[-500:])
        else:
            assert method == "scorer" and said.startswith("0 or more images")
            assert proc.returncode == 0 and proc.stdout.strip() == f"(0, {TOP_K}) (0, {TOP_K})", proc.stderr[-500:]
