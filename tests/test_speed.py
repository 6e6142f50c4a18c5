"""What the speed work must not change: the decoded-image cache gives the pixels decoding gives (and is
rebuilt, never reused, when damaged or when an image changes); the LSTM run as RepeatedInputLSTM is
nn.LSTM; the backbone with its BatchNorm folded and its 5x5 weight gradients in pieces is the plain one;
and the GPU benchmark runs (on the CPU, in its smoke mode)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torch import nn

from tagrank.data import cache
from tagrank.data.datamodule import RankedTagDataModule, load_image
from tagrank.data.images import ImageTransform, cached_images, content_digest, image_cache_path
from tagrank.errors import TagrankError
from tagrank.models.backbones import EfficientNetLite0, backbone_input, conv_bn
from tagrank.models.lstm import LSTMTagger, RepeatedInputLSTM

from .conftest import ROOT


class _Loads:
    """``load_image``, counting the images it decodes."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, path):
        self.count += 1
        return load_image(path)


def test_decoded_image_cache_gives_the_decoded_pixels_and_is_rebuilt_when_damaged_or_images_change(tmp_path):
    dm = RankedTagDataModule("tagrank.data.synthetic.SyntheticSource", str(tmp_path), n_train=10, n_val=3,
                             n_test=3, render_size=40)
    dm.setup()
    transform = ImageTransform(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))  # a real resize: 40 -> 32 px
    loads = _Loads()
    images = cached_images(dm.paths, dm.cache_dir, dm.name, transform, loads)
    assert loads.count == 16 and len(images) == 16
    for row in range(16):  # exactly the tensors decoding gives, after the same normalisation
        assert torch.equal(transform.normalize(images[row]), transform(load_image(dm.paths[row])))

    cached_images(dm.paths, dm.cache_dir, dm.name, transform, loads)
    assert loads.count == 16  # reused

    path = image_cache_path(dm.cache_dir, dm.name, 32)
    with open(path, "r+b") as f:  # cut short
        f.truncate(path.stat().st_size - 100)
    images = cached_images(dm.paths, dm.cache_dir, dm.name, transform, loads)
    assert loads.count == 32 and torch.equal(images[15], transform.resize(load_image(dm.paths[15])))

    for p in dm.paths:  # every image rewritten with its own bytes (another inode and time): reused
        new = tmp_path / "new.jpg"
        new.write_bytes(p.read_bytes())
        os.replace(new, p)
    cached_images(dm.paths, dm.cache_dir, dm.name, transform, loads)
    assert loads.count == 32

    # One image replaced by another file (written beside it and renamed over it, as tools do).
    new = tmp_path / "new.jpg"
    Image.open(dm.paths[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(new, quality=92)
    os.replace(new, dm.paths[0])
    images = cached_images(dm.paths, dm.cache_dir, dm.name, transform, loads)
    assert loads.count == 48
    assert torch.equal(images[0], transform.resize(load_image(dm.paths[0])))
    assert cache.verify(path) == 16

    dm.paths[3].unlink()  # an image gone: one line naming it, as decoding it would
    with pytest.raises(TagrankError, match=f"^{dm.paths[3]}: cannot read image \\(No such file or directory\\)$"):
        cached_images(dm.paths, dm.cache_dir, dm.name, transform, loads)


def test_the_images_bytes_are_read_once_while_no_file_changes(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(bytes([i]) * (1000 + i))
    expected = hashlib.sha256(b"".join(hashlib.sha256(p.read_bytes()).digest() for p in paths)).hexdigest()
    assert content_digest(paths, tmp_path / "cache") == expected
    [memo] = [p for p in (tmp_path / "cache" / "files").iterdir() if p.suffix == ".sha256"]
    # Later calls read the digest kept under the files' sizes and times, not the files ...
    cache.write_text(memo, "f" * 64, count=3, unit="images")
    assert content_digest(paths, tmp_path / "cache") == "f" * 64
    memo.write_text("0" * 64)  # ... unless it is damaged: then the files are read again
    assert content_digest(paths, tmp_path / "cache") == expected
    paths[1].write_bytes(b"other")  # a file changed: read again, another digest
    assert content_digest(paths, tmp_path / "cache") not in (expected, "f" * 64)
    # Where the digest cannot be kept (a read-only cache; here a file where the folder would be), it is
    # still given: the images are read each time.
    shutil.rmtree(tmp_path / "cache" / "files")
    (tmp_path / "cache" / "files").write_text("not a folder")
    assert content_digest(paths, tmp_path / "cache") == content_digest(paths, tmp_path / "other")
    paths[2].unlink()
    with pytest.raises(TagrankError, match=f"^{paths[2]}: cannot read image \\(No such file or directory\\)$"):
        content_digest(paths, tmp_path / "cache")


def test_the_data_module_reads_images_from_the_cache(tmp_path):
    dm = RankedTagDataModule("tagrank.data.synthetic.SyntheticSource", str(tmp_path), n_train=6, n_val=2,
                             n_test=2, render_size=32)
    transform = ImageTransform(32, (0.5,) * 3, (0.5,) * 3)
    dm.use_images(transform)
    assert dm.pixels is not None and image_cache_path(tmp_path, dm.name, 32).is_file()
    batch = next(iter(dm.val_dataloader()))  # uint8 pixels; the model normalises the batch on its device
    assert batch["image"].dtype == torch.uint8
    expected = torch.stack([transform(load_image(dm.paths[row])) for row in dm.rows("val")])
    backbone = EfficientNetLite0()
    backbone.mean, backbone.std = (0.5,) * 3, (0.5,) * 3
    assert torch.equal(backbone_input(backbone, batch["image"]), expected)


@pytest.mark.parametrize("batch_sizes", [(3,), (3, 3), (3,) * 7, (3, 2, 1), (3, 3, 1, 1), (1, 1, 1, 1)])
def test_repeated_input_lstm_is_nn_lstm_on_each_row_until_its_end(batch_sizes):
    """Packed like nn.utils.rnn.PackedSequence: row r runs the steps t with r < batch_sizes[t]."""
    torch.manual_seed(len(batch_sizes))
    lstm = nn.LSTM(5, 4, batch_first=True).double()
    v = torch.randn(3, 5, dtype=torch.double, requires_grad=True)
    params = [v, *lstm.parameters()]
    steps = len(batch_sizes)
    h, _ = lstm(v.unsqueeze(1).expand(-1, steps, -1))  # [B, T, H]
    ref = torch.cat([h[:n, t] for t, n in enumerate(batch_sizes)])  # PackedSequence.data's layout
    out = RepeatedInputLSTM.apply(v, *lstm.parameters(), batch_sizes)
    grad = torch.randn_like(ref)
    assert torch.allclose(out, ref, atol=1e-12)
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        assert torch.allclose(a, b, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *a: RepeatedInputLSTM.apply(*a, batch_sizes),
                                    [p.detach().requires_grad_() for p in params])


def test_lstm_tagger_runs_each_list_only_as_long_as_it_is_and_gets_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = LSTMTagger(num_tags=9, proj_dim=6, hidden_size=5, dropout=0.0).double()
    target = torch.tensor([[1, 2, -1, -1, -1], [3, -1, -1, -1, -1], [4, 5, 6, 7, 8], [-1] * 5, [0, 8, 7, -1, -1]])
    batch = {"features": torch.randn(5, model.feature_dim, dtype=torch.double), "target": target}
    loss = model.loss(batch)
    params = [*model.proj.parameters(), *model.lstm.parameters(), *model.out.parameters()]
    grads = torch.autograd.grad(loss, params)
    # The reference: nn.LSTM over every step of every row, the loss ignoring the padding.
    v = model.proj(batch["features"])
    h, _ = model.lstm(v.unsqueeze(1).expand(-1, 5, -1))
    logits = model.out(h)
    ref = nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-1, reduction="sum") / 5
    ref_grads = torch.autograd.grad(ref, params)
    assert torch.allclose(loss, ref, atol=1e-12)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-12)
    empty = {"features": batch["features"], "target": torch.full_like(target, -1)}  # no tag at all: loss 0
    assert model.loss(empty).item() == 0 and model.loss(empty).requires_grad


def test_lstm_tagger_keeps_nn_lstm_parameters():
    model = LSTMTagger(num_tags=7, proj_dim=6, hidden_size=5)
    keys = {k for k in model.state_dict() if k.startswith("lstm.")}
    assert keys == {f"lstm.{k}" for k in nn.LSTM(6, 5).state_dict()}  # checkpoints load both ways


@pytest.mark.parametrize("kernel,stride,groups,size", [(5, 1, 6, 9), (5, 2, 6, 8), (5, 2, 6, 9), (5, 2, 6, 20), (3, 2, 6, 8),
                                                       (1, 1, 1, 7)])
def test_folded_conv_bn_is_conv_then_batchnorm(kernel, stride, groups, size):
    torch.manual_seed(kernel + stride + size)
    conv = nn.Conv2d(6 if groups > 1 else 4, 6, kernel, stride, kernel // 2, groups=groups, bias=False).double()
    bn = nn.BatchNorm2d(6).double().eval()
    with torch.no_grad():
        bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2), bn.weight.normal_(), bn.bias.normal_()
    x = torch.randn(3, conv.in_channels, size, size, dtype=torch.double, requires_grad=True)
    params = [x, conv.weight, bn.weight, bn.bias]
    ref = bn(conv(x))
    out = conv_bn(conv, bn, x)
    grad = torch.randn_like(ref)
    assert torch.allclose(out, ref, atol=1e-12)
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        assert torch.allclose(a, b, atol=1e-11)


def test_gpu_benchmark_runs_in_its_cpu_smoke_mode(tmp_path):
    out = tmp_path / "bench_gpu.json"

    def bench(dtype: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--quick",
                               "--dtype", dtype, "--json", str(out)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "TAGRANK_CACHE": str(tmp_path / "cache")})

    proc = bench("float32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    for name in ("loader-32px", "efficientnet_lite0-32px-b2", "vgg16-32px-b2", "end-to-end"):
        assert figures[name]["value"] > 0, figures
    assert 0 < figures["vgg16-32px-b2"]["peak_fraction"] < 1
    # VGG16 costs ~40 times EfficientNet-Lite0 per image (15.5 against 0.39 GMAC forward at 224 px)
    assert 20 < figures["vgg16-32px-b2"]["flops_per_image"] / figures["efficientnet_lite0-32px-b2"]["flops_per_image"] < 60
    assert "of the float32 peak" in proc.stdout and "end-to-end" in proc.stdout
    # bf16: runs where the CPU has bf16 kernels (AVX-512), else one clear line and exit 2
    out.unlink()
    proc = bench("bf16")
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "of the bf16 peak" in proc.stdout and json.loads(out.read_text())["end-to-end"]["value"] > 0
    else:
        assert proc.returncode == 2 and "no bf16 kernels" in proc.stderr and "--dtype float32" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and not out.exists()


def test_conv_bn_under_bf16_autocast_gives_float32_gradients_close_to_float64():
    """The depthwise path's own backward under CPU autocast (bench_gpu's and trainer precision=bf16's case)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 5, 1, 2, groups=6, bias=False)
    bn = nn.BatchNorm2d(6).eval()
    x = torch.randn(2, 6, 9, 9)
    ref = bn.double()(conv.double()(x.double()))
    ref_grads = torch.autograd.grad(ref.sum(), [conv.weight, bn.weight])
    conv, bn = conv.float(), bn.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv_bn(conv, bn, x.bfloat16().requires_grad_())
    grads = torch.autograd.grad(out.float().sum(), [conv.weight, bn.weight])
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, rtol=0.05, atol=0.05)  # bf16 keeps 8 bits of mantissa
    for a, b in zip(grads, ref_grads):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=0.05, atol=0.05 * b.abs().max().item())


def test_bench_writes_each_figure_with_its_baseline_and_ratio(tmp_path):
    """``make bench``'s output format, on its quickest figure (the metrics) and its schema helpers."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--only", "metrics", "--repeats", "2",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"value", "unit", "baseline", "ratio", "target", "ok"}
    assert metrics["ok"] is (metrics["value"] < 0.5)
    assert metrics["ratio"] == pytest.approx(metrics["baseline"] / metrics["value"], rel=0.01)
    assert "metrics" in proc.stdout and "ratio" in proc.stdout

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    calls = iter(range(100))
    runs = bench.rounds({"a": lambda: next(calls), "b": lambda: next(calls)}, 3)
    assert runs == {"a": [2, 4, 6], "b": [3, 5, 7]}  # one untimed round first, then the two take turns
    shown = bench.figure(2.0, "x/s", 1.0, 2.0, ">= 2", True, (1.8, 2.2))
    assert shown["spread"] == [1.8, 2.2]

    # The fine-tuning step's FLOP count: EfficientNet-Lite0 is ~0.39 GMAC a 224 px image (0.78 GFLOP).
    from tagrank.models.lstm import LSTMTagger

    model = LSTMTagger(num_tags=5, backbone="efficientnet_lite0").eval()
    per_image = bench.backbone_flops(model, torch.zeros(2, 3, 224, 224, dtype=torch.uint8))
    assert 0.70e9 < per_image < 0.84e9
    at = {size: bench.backbone_flops(model, torch.zeros(1, 3, size, size, dtype=torch.uint8)) for size in (128, 256)}
    assert at[256] == pytest.approx(4 * at[128], rel=1e-6)  # sides divisible by the network's stride of 32
    assert bench.matmul_flops(256, 2) > 1e8


def test_the_label_query_figures_time_each_layer_against_its_baseline():
    """``make bench``'s label_query figures (on few tags here): each variant's step, as samples/s, against
    the layer it replaces (no timing asserted: the figures' consistency only)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    figures = bench.bench_label_query(1, num_tags=12, groups=5)
    step, groups = figures["label_query_step"], figures["label_query_groups"]
    assert step["unit"] == groups["unit"] == "samples/s" and groups["baseline"] == step["value"]
    for f in (step, groups):
        assert f["ratio"] == pytest.approx(f["value"] / f["baseline"], rel=0.01)
