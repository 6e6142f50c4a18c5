"""``make bench-gpu``: fine-tuning throughput on one CUDA GPU, and whether the loader keeps it fed.

    .venv/bin/python benchmarks/bench_gpu.py [--json results/bench_gpu.json]     # under 5 minutes
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --quick --dtype float32   # a smoke run of this script

Where no CUDA device is visible it prints one line and exits 0 (unless ``--device cpu``). ``--dtype bf16``
(the default) on a CPU without bf16 kernels (oneDNN's need AVX-512; AVX2-only CPUs emulate bf16 at a
hundredth of the speed, which makes the figures meaningless) prints one line and exits 2. Figures:

- ``loader-<S>px``: images/s the training loader delivers on its own, as ``trainer=gpu`` sets it up
  (the decoded-image cache, uint8 batches, ``data.num_workers`` workers, pinned memory), copied to the
  device and normalised there;
- ``<backbone>-<S>px-b<B>``: images/s of a fine-tuning step (backbone unfrozen + the LSTM head, bf16
  autocast, channels-last, fused Adam) on a batch already on the device, for EfficientNet-Lite0 at 128
  and 224 px and VGG16 at 224 px, batch 16 and 128; with the fraction of the device's bf16 peak the
  step reaches: the backbone's training FLOPs per image (3 x its forward's, counted by
  ``torch.utils.flop_counter``) x images/s / peak (the datasheet's dense bf16 peak where the device is
  known, else a measured bf16 matrix product's);
- ``end-to-end``: the loader feeding the EfficientNet-Lite0 128 px, batch 128 step: the GPU is the
  bottleneck when it is close to that step's images/s.

VGG16 runs with random weights: tagrank never downloads weights, and speed does not depend on them.
Each figure is the median of 3 timed repeats after warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s), by a word of the device name.
DTYPES = {"bf16": torch.bfloat16, "float32": torch.float32}
DTYPES_SHOWN = {v: k for k, v in DTYPES.items()}
DATASHEET_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
                  "4090": 165e12, "3090": 71e12}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_rate(fn, items: int, repeats: int, device: torch.device) -> float:
    rates = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates)


def peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> tuple[float, str]:
    """The dense peak: the datasheet's bf16 one for a known GPU, else a large matrix product's rate."""
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for key, peak in DATASHEET_BF16.items():
            if key in name:
                return peak, f"{name} datasheet"
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    rate = median_rate(lambda: [a @ a for _ in range(5)], 5 * 2 * n ** 3, 3, device)
    return rate, f"measured {n}x{n} {DTYPES_SHOWN[dtype]} matmul on {device.type}"


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast, or nothing for float32 (autocast to float32 is refused on a CPU)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def step_figures(name: str, size: int, batch: int, device: torch.device, steps: int, peak: float,
                 repeats: int = 3, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Images/s of fine-tuning steps on a device-resident batch, and the backbone's share of the peak."""
    from torch.utils.flop_counter import FlopCounterMode

    from tagrank.models.backbones import backbone_input
    from tagrank.models.lstm import LSTMTagger

    torch.manual_seed(0)
    model = LSTMTagger(num_tags=24, backbone=name).to(device)  # random weights: speed only
    model.train()
    model.backbone.requires_grad_(True).to(memory_format=torch.channels_last)
    optimizer = model.configure_optimizers()
    optimizer.add_param_group({"params": list(model.backbone.parameters()), "lr": 1e-5, "weight_decay": 1e-3})
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    batch_dict = {"image": images.contiguous(memory_format=torch.channels_last),
                  "target": torch.randint(0, 24, (batch, 7), device=device), "lengths": [7] * batch}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = model.loss(batch_dict)
        loss.backward()
        optimizer.step()

    for _ in range(max(1, steps // 3)):
        step()
    rate = median_rate(lambda: [step() for _ in range(steps)], steps * batch, repeats, device)
    # Training FLOPs = 3 x the forward's (the backward computes the input's and the weights' gradients,
    # each as costly as the forward): flop_counter's own backward count ignores groups, so it is
    # tens of times too high for the depthwise convolutions of EfficientNet.
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), autocast(device, dtype):
        model.backbone(backbone_input(model.backbone, batch_dict["image"]))
    per_image = 3 * counter.get_total_flops() / batch
    return {"value": round(rate, 1), "unit": "images/s", "flops_per_image": per_image,
            "peak_fraction": round(per_image * rate / peak, 4)}


def loader_rate(dm, size: int, device: torch.device, batches: int, batch: int, repeats: int = 3) -> float:
    """Images/s of the training loader alone, copied to the device and normalised there."""
    from torch.utils.data import DataLoader

    from tagrank.data.datamodule import RankedTagDataset
    from tagrank.data.images import ImageTransform
    from tagrank.models.backbones import EfficientNetLite0, backbone_input

    transform = ImageTransform(size, EfficientNetLite0.mean, EfficientNetLite0.std)
    pixels = dm.decoded_images(transform)
    rows = dm.rows("train")
    dataset = RankedTagDataset(rows, dm.targets, dm.paths, None, transform, pixels=pixels)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=dm.num_workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=dm.num_workers > 0)
    norm = EfficientNetLite0()

    def run() -> None:
        seen = 0
        while seen < batches:
            for b in loader:
                backbone_input(norm, b["image"].to(device, non_blocking=True))
                seen += 1
                if seen == batches:
                    break

    run()  # starts the workers
    return median_rate(run, batches * batch, repeats, device)


def end_to_end(dm, device: torch.device, size: int, batch: int, steps: int, repeats: int = 3,
               dtype: torch.dtype = torch.bfloat16) -> float:
    """The EfficientNet-Lite0 fine-tuning step fed by the loader."""
    from torch.utils.data import DataLoader

    from tagrank.data.datamodule import RankedTagDataset
    from tagrank.data.images import ImageTransform
    from tagrank.models.lstm import LSTMTagger

    model = LSTMTagger(num_tags=dm.num_tags).to(device)
    model.train()
    model.backbone.requires_grad_(True).to(memory_format=torch.channels_last)
    optimizer = model.configure_optimizers()
    optimizer.add_param_group({"params": list(model.backbone.parameters()), "lr": 1e-5, "weight_decay": 1e-3})
    transform = ImageTransform(size, model.backbone.mean, model.backbone.std)
    dataset = RankedTagDataset(dm.rows("train"), dm.targets, dm.paths, None, transform, pixels=dm.decoded_images(transform))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=dm.num_workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=dm.num_workers > 0)

    def run() -> None:
        done = 0
        while done < steps:
            for b in loader:
                b = model.on_before_batch_transfer(b, 0)
                b = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()}
                b["image"] = b["image"].contiguous(memory_format=torch.channels_last)
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, dtype):
                    loss = model.loss(b)
                loss.backward()
                optimizer.step()
                done += 1
                if done == steps:
                    break

    run()
    return median_rate(run, steps * batch, repeats, device)


def data_module(quick: bool, workers: int):
    """The synthetic set (a smaller one than the default: the loader's rate does not depend on its size)."""
    from tagrank.data.datamodule import RankedTagDataModule

    cache = os.environ.get("TAGRANK_CACHE") or str(Path(tempfile.gettempdir()) / "tagrank-bench-gpu")
    n = (48, 8, 8) if quick else (2048, 64, 64)
    dm = RankedTagDataModule("tagrank.data.synthetic.SyntheticSource", cache, n_train=n[0], n_val=n[1], n_test=n[2],
                             num_workers=workers)
    dm.setup()
    return dm


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke run of the script)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps: checks that everything runs")
    p.add_argument("--dtype", default="bf16", choices=list(DTYPES),
                   help="bf16 autocast (default, as trainer=gpu trains) or float32")
    p.add_argument("--json", default=str(ROOT / "results" / "bench_gpu.json"))
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("bench-gpu: skipped: no CUDA device is visible (benchmarks/bench_gpu.py --device cpu --quick runs it on the CPU)")
        return 0
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    if device.type == "cpu" and dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print("bench-gpu: error: this CPU has no bf16 kernels (oneDNN's need AVX-512): bf16 would be emulated and its "
              "figures meaningless; use --dtype float32 on it", file=sys.stderr)
        return 2
    workers = 4 if not a.quick else 0  # conf/trainer/gpu.yaml's data.num_workers
    repeats = 1 if a.quick else 3
    configs = ([("efficientnet_lite0", 32, 2), ("vgg16", 32, 2)] if a.quick else
               [(n, s, b) for n, s in (("efficientnet_lite0", 128), ("efficientnet_lite0", 224), ("vgg16", 224))
                for b in (16, 128)])
    steps = 1 if a.quick else 10
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"bench-gpu on {where}, torch {torch.__version__}; loader: {workers} workers, {os.cpu_count()} CPUs", flush=True)
    peak, source = peak_flops(device, dtype)
    print(f"{a.dtype} peak {peak / 1e12:.1f} TFLOP/s ({source})", flush=True)
    results: dict[str, dict] = {}
    dm = data_module(a.quick, workers)
    for size in ((32,) if a.quick else (128, 224)):
        rate = loader_rate(dm, size, device, batches=3 if a.quick else 40, batch=8 if a.quick else 128, repeats=repeats)
        results[f"loader-{size}px"] = {"value": round(rate, 1), "unit": "images/s"}
        print(f"loader-{size}px: {rate:.4g} images/s (decoded-image cache, uint8, pinned, normalised on the device)", flush=True)
    for name, size, batch in configs:
        start = time.perf_counter()
        f = step_figures(name, size, batch, device, steps, peak, repeats, dtype)
        f["seconds"] = round(time.perf_counter() - start, 1)
        key = f"{name}-{size}px-b{batch}"
        results[key] = f
        print(f"{key}: {f['value']:.4g} images/s fine-tuning; backbone {f['flops_per_image'] / 1e9:.2f} GFLOP an image "
              f"(forward + backward): {100 * f['peak_fraction']:.1f}% of the {a.dtype} peak", flush=True)
    size, batch = (32, 2) if a.quick else (128, 128)
    e2e = end_to_end(dm, device, size, batch, steps=1 if a.quick else 10, repeats=repeats, dtype=dtype)
    step_key = f"efficientnet_lite0-{size}px-b{batch}"
    results["end-to-end"] = {"value": round(e2e, 1), "unit": "images/s", "baseline": results[step_key]["value"],
                             "ratio": round(e2e / results[step_key]["value"], 3)}
    print(f"end-to-end (loader + {step_key} step): {e2e:.4g} images/s, {e2e / results[step_key]['value']:.2f} x the "
          "step on a device-resident batch", flush=True)
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": where, "dtype": a.dtype, f"peak_{a.dtype}": peak, "peak_source": source, **results}, indent=1) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
