"""``make bench``: tagrank's speed and memory figures, each a ratio of two things measured in this run.

    .venv/bin/python benchmarks/bench.py [--repeats 5] [--only head,extract,...] [--threads 1] [--json results/bench.json]

Prints one line per figure and writes ``results/bench.json`` (``{name: {value, unit, baseline, ratio,
target, ok}}``). Every value is the median of ``--repeats`` timed repeats after an untimed warm-up, and
its baseline is timed in the same repeats (interleaved), so a machine loaded by other work slows both:
the ratio is what to compare between machines and commits. The load average is printed with them.

Figures (issue 14):
  head          one optimiser step of the LSTM head at batch 16 on cached features (LSTMTagger: loss,
                backward, fused Adam), against a plain loop with nn.LSTM fed the image at every step
                (the median of the ratios within rounds, with their quartiles: it is the noisiest figure);
                and the full ``trainer.fit`` (the project's Trainer, callbacks and logger) against that step
  extract       the feature-cache build against the bare backbone forward on already-decoded tensors
  finetune      the fine-tuning loader with the decoded-image cache against decoding JPEGs, and a whole
                fine-tuning step (loader, backbone forward and backward, head, Adam) with each; and that
                step's backbone FLOPs a second against a 1024x1024 float32 matrix product (how near the
                CPU's limit it runs)
  finetune_blocks  ``blocksN_vs_full``: a fine-tuning step of the last N blocks (--finetune-blocks) on the
                trunk's cached outputs (backbone.finetune_blocks=N) against a step of the whole backbone from
                images; ``blocksN_vs_images``: against the same N blocks trained through the whole network
                from images (the rest frozen); batches in memory, 3 steps a round
  metrics       NDCG@k and P@k for 10,000 images x k = 1..10 (RankingMetrics) against the plain-list
                reference functions
  memory        peak resident memory of a short fine-tuning run (both caches) against the caches' size;
                on Flickr8k when its converter and ../shared/data/flickr8k are there, else synthetic
  label_query   one training step of ``model=label_query`` (loss, backward, fused Adam) at batch 16 on random
                maps (Flickr8k's shape: V = 451 tags, 1280 x 4 x 4 maps, the config's d_model 256), without the
                self-attention among the tag queries (the default) against with it (``self_attention=true``);
                and (``label_query_groups``) with ML-Decoder's group decoding (``groups=100``) against one query
                per tag (issue 24)
  convert       COCO conversion (benchmarks/bench_coco.py at --coco-images generated images) and the
                real Flickr8k's (skipped when ../shared/data/flickr8k is absent), against json.load

The data is the embedded synthetic set (default settings, in ``$TAGRANK_CACHE``, built on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
BATCH = 16
# Where the runs' output folders go: one temporary folder that main() removes at the end, so that
# repeated ``make bench`` runs leave nothing behind in /tmp (they once left 3 GB there).
RUNS_DIR: str | None = None


def figure(value: float, unit: str, baseline: float, ratio: float, target: str | None, ok: bool | None,
           spread: tuple[float, float] | None = None) -> dict:
    """One figure; ``spread``: the quartiles of the ratio over the rounds, where they are measured."""
    out = {"value": round(value, 4), "unit": unit, "baseline": round(baseline, 4), "ratio": round(ratio, 3),
           "target": target, "ok": ok}
    if spread is not None:
        out["spread"] = [round(q, 3) for q in spread]
    return out


def interleaved(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median of each function's return value (a rate or seconds) over ``repeats`` rounds, the functions
    taking turns within a round; one untimed round first (warm-up: allocator, caches, lazy init)."""
    return {k: statistics.median(v) for k, v in rounds(fns, repeats).items()}


def rounds(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each function's return values over ``repeats`` rounds (see :func:`interleaved`)."""
    for fn in fns.values():
        fn()
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            runs[k].append(fn())
    return runs


def rate(n_items: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return n_items / (time.perf_counter() - start)


# -- the shared setup ------------------------------------------------------------------------------
def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import open_dict

    from tagrank import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp(prefix="run-", dir=RUNS_DIR)
    return cfg


class Setup:
    """The synthetic data module, a model with pretrained weights and cached features (built once)."""

    def __init__(self) -> None:
        from tagrank.pipeline import attach_inputs, build_data, build_model

        self.cfg = compose(["trainer.enable_progress_bar=false"])
        self.dm = build_data(self.cfg)
        self.model = build_model(self.cfg, self.dm.num_tags)
        attach_inputs(self.cfg, self.dm, self.model, need_images=False)

    def feature_batches(self, n: int) -> list[dict[str, torch.Tensor]]:
        rows = self.dm.rows("train")
        g = torch.Generator().manual_seed(0)
        out = []
        for _ in range(n):
            pick = torch.tensor(rows)[torch.randperm(len(rows), generator=g)[:BATCH]]
            out.append({"index": pick, "target": self.dm.targets[pick], "features": self.dm.features[pick]})
        return out


# -- 1. the LSTM head --------------------------------------------------------------------------------
class PlainLSTM(torch.nn.Module):
    """The baseline: the paper's model as one would first write it, nn.LSTM fed the image at every step."""

    def __init__(self, feature_dim: int, num_tags: int, proj_dim: int = 100, hidden: int = 300) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(feature_dim, proj_dim)
        self.lstm = torch.nn.LSTM(proj_dim, hidden, batch_first=True)
        self.drop = torch.nn.Dropout(0.5)
        self.out = torch.nn.Linear(hidden, num_tags)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = batch["target"]
        v = self.drop(self.proj(batch["features"]))
        h, _ = self.lstm(v.unsqueeze(1).expand(-1, target.shape[1], -1))
        logits = self.out(self.drop(h))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-1,
                                                 reduction="sum") / len(target)


def steps_of(loss_fn: Callable, optimizer: torch.optim.Optimizer, batches: list) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(batch).backward()
            optimizer.step()
        return len(batches) * BATCH / (time.perf_counter() - start)

    return run


def fit_rate(setup: Setup, steps: int, warmup: int) -> float:
    """Samples/s of ``trainer.fit`` on cached features (the project's Trainer, callbacks, CSV logger),
    from step ``warmup`` to the end (the start-up and the first steps excluded; the end-of-epoch
    validation on features and checkpoint at step 250 included, as in every run)."""
    from lightning.pytorch.callbacks import Callback

    from tagrank.pipeline import build_model, build_trainer

    class Clock(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
            if trainer.global_step == warmup:
                self.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module) -> None:
            self.seconds = time.perf_counter() - self.start

    cfg = compose(["trainer.enable_progress_bar=false", f"trainer.max_steps={steps}", "trainer.max_epochs=-1",
                   "model.finetune_after_steps=0", "test=false"])
    model = build_model(cfg, setup.dm.num_tags)
    clock = Clock()
    trainer = build_trainer(cfg)
    trainer.callbacks.append(clock)
    trainer.fit(model, datamodule=setup.dm)
    return (steps - warmup) * BATCH / clock.seconds


def bench_head(setup: Setup, repeats: int) -> dict[str, dict]:
    from tagrank.pipeline import build_model

    torch.manual_seed(0)
    batches = setup.feature_batches(40)
    ours = build_model(setup.cfg, setup.dm.num_tags)
    ours.train()
    plain = PlainLSTM(ours.feature_dim, setup.dm.num_tags)
    hp = ours.hparams
    plain_opt = torch.optim.Adam(plain.parameters(), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
    ours_opt = ours.configure_optimizers()
    # A round is 40 steps of each (under a second): 5x the rounds of the other figures. On a shared
    # machine one 5-round median of this ratio moved between 1.3 and 2.3 from run to run; 25 rounds, and
    # the ratio taken within each round (the two measured a second apart), keep it within about +-0.1.
    runs = rounds({"plain": steps_of(plain.loss, plain_opt, batches), "ours": steps_of(ours.loss, ours_opt, batches)},
                  5 * repeats)
    r = {k: statistics.median(v) for k, v in runs.items()}
    ratios = [o / p for o, p in zip(runs["ours"], runs["plain"])]
    quartiles = statistics.quantiles(ratios, n=4)
    step_ratio = statistics.median(ratios)
    fit = statistics.median(fit_rate(setup, 300, 50) for _ in range(max(1, repeats // 2)))
    return {"head_step": figure(r["ours"], "samples/s", r["plain"], step_ratio, ">= 2", step_ratio >= 2,
                                (quartiles[0], quartiles[2])),
            "head_fit": figure(fit, "samples/s", r["ours"], fit / r["ours"], None, None)}


# -- 2. feature extraction ------------------------------------------------------------------------------
def bench_extract(setup: Setup, repeats: int, n: int = 256) -> dict[str, dict]:
    from tagrank.data.datamodule import RankedTagDataset
    from tagrank.data.features import extract
    from tagrank.models.backbones import backbone_input

    bb = setup.model.backbone
    transform = _transform(setup)
    dataset = RankedTagDataset(list(range(n)), setup.dm.targets, setup.dm.paths, None, transform)
    size = setup.cfg.backbone.feature_batch_size
    decoded = [backbone_input(bb, torch.stack([dataset[i]["image"] for i in range(s, min(s + size, n))])).contiguous(
        memory_format=torch.channels_last) for s in range(0, n, size)]

    @torch.no_grad()
    def bare() -> float:
        bb.eval().to(memory_format=torch.channels_last)
        return rate(n, lambda: [bb(x) for x in decoded])

    r = interleaved({"bare": bare, "extract": lambda: rate(n, lambda: extract(bb, dataset, size, setup.dm.num_workers))},
                    repeats)
    ratio = r["extract"] / r["bare"]
    return {"extract": figure(r["extract"], "images/s", r["bare"], ratio, ">= 0.8", ratio >= 0.8)}


def _transform(setup: Setup):
    from tagrank.data.datamodule import image_transform

    bb = setup.model.backbone
    return image_transform(setup.cfg.backbone.image_size, bb.mean, bb.std)


# -- 3. fine-tuning input -------------------------------------------------------------------------------
def bench_finetune(setup: Setup, repeats: int, batches: int = 40, steps: int = 6) -> dict[str, dict]:
    from torch.utils.data import DataLoader

    from tagrank.data.datamodule import RankedTagDataset
    from tagrank.pipeline import build_model

    dm, transform = setup.dm, _transform(setup)
    pixels = dm.decoded_images(transform)
    rows = dm.rows("train")
    datasets = {"decode": RankedTagDataset(rows, dm.targets, dm.paths, None, transform),
                "cache": RankedTagDataset(rows, dm.targets, dm.paths, None, transform, pixels=pixels)}

    def loader(kind: str) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(datasets[kind], batch_size=BATCH, shuffle=True, generator=g, num_workers=dm.num_workers)

    def load_only(kind: str) -> Callable[[], float]:
        def run() -> float:
            it = iter(loader(kind))
            return rate(batches * BATCH, lambda: [next(it) for _ in range(batches)])

        return run

    r = interleaved({"decode": load_only("decode"), "cache": load_only("cache")}, repeats)
    ratio = r["cache"] / r["decode"]
    out = {"finetune_loader": figure(r["cache"], "images/s", r["decode"], ratio, ">= 3", ratio >= 3)}

    model = build_model(setup.cfg, dm.num_tags)
    model.train()
    model.backbone.requires_grad_(True).to(memory_format=torch.channels_last)
    optimizer = model.configure_optimizers()
    optimizer.add_param_group({"params": list(model.backbone.parameters()), "lr": 1e-5, "weight_decay": 1e-3})

    def train_steps(kind: str) -> Callable[[], float]:
        def run() -> float:
            it = iter(loader(kind))
            start = time.perf_counter()
            for _ in range(steps):
                batch = next(it)
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
                optimizer.zero_grad(set_to_none=True)
                model.loss(batch).backward()
                optimizer.step()
            return steps * BATCH / (time.perf_counter() - start)

        return run

    r = interleaved({"decode": train_steps("decode"), "cache": train_steps("cache")}, repeats)
    out["finetune_step"] = figure(r["cache"], "images/s", r["decode"], r["cache"] / r["decode"], None, None)
    # How near the machine's limit that step is: the backbone's training FLOPs a second against a large
    # float32 matrix product on the same threads (the most this CPU does; the 1x1 convolutions are
    # matrix products, the depthwise ones and ReLU6 are bound by memory and stay well below it).
    flops = 3 * backbone_flops(model, next(iter(loader("cache")))["image"]) * r["cache"]
    gemm = interleaved({"gemm": matmul_flops}, repeats)["gemm"]
    out["finetune_flops"] = figure(flops / 1e9, "GFLOP/s", gemm / 1e9, flops / gemm, None, None)
    return out


# -- 3b. fine-tuning the top on the cached trunk (backbone.finetune_blocks) ------------------------------
def bench_finetune_blocks(setup: Setup, repeats: int, blocks: int = 5, steps: int = 3) -> dict[str, dict]:
    """One fine-tuning step (loss, backward, Adam on the head and the trainable backbone part) at batch 16
    on batches already in memory, three ways: the last ``blocks`` blocks and head conv on the trunk's
    outputs (what the trunk cache holds: ``trunk_output``, computed here for the batches used), the same
    blocks through the whole network from the images (the rest frozen), and the whole backbone."""
    from tagrank.data.images import load_image
    from tagrank.models.backbones import trunk_output
    from tagrank.pipeline import build_model

    dm, transform = setup.dm, _transform(setup)
    rows = torch.tensor(dm.rows("train"))[torch.randperm(len(dm.rows("train")), generator=torch.Generator().manual_seed(0))]
    batches = [{"index": pick, "target": dm.targets[pick],
                "image": torch.stack([transform.resize(load_image(dm.paths[r])).as_subclass(torch.Tensor) for r in pick.tolist()])
                .contiguous(memory_format=torch.channels_last)}
               for pick in rows[: steps * BATCH].split(BATCH)]

    def trainer_of(top_blocks: int | None) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = build_model(setup.cfg, dm.num_tags)
        model.finetune_blocks = top_blocks
        model.train()
        model.backbone.to(memory_format=torch.channels_last)
        params = [p for m in model.finetuned_modules() for p in m.parameters()]
        for p in params:
            p.requires_grad_(True)
        optimizer = model.configure_optimizers()
        optimizer.add_param_group({"params": params, "lr": 1e-5, "weight_decay": 1e-3})
        model.mark_finetuned()
        return model, optimizer

    (full, full_opt), (whole, whole_opt), (top, top_opt) = trainer_of(None), trainer_of(blocks), trainer_of(blocks)
    with torch.no_grad():
        cached = [{"index": b["index"], "target": b["target"],
                   "trunk": trunk_output(top.backbone, b["image"], blocks).contiguous(memory_format=torch.channels_last)}
                  for b in batches]
    r = interleaved({"full": steps_of(full.loss, full_opt, batches), "whole": steps_of(whole.loss, whole_opt, batches),
                     "cached": steps_of(top.loss, top_opt, cached)}, repeats)
    vs_full, vs_whole = r["cached"] / r["full"], r["cached"] / r["whole"]
    # "Several times faster" than full fine-tuning is issue 24's expectation (3.1x and 3.4x measured, N=5).
    return {f"blocks{blocks}_vs_full": figure(r["cached"], "images/s", r["full"], vs_full, ">= 3", vs_full >= 3),
            f"blocks{blocks}_vs_images": figure(r["cached"], "images/s", r["whole"], vs_whole, None, None)}


def backbone_flops(model: torch.nn.Module, images: torch.Tensor) -> float:
    """The backbone's forward FLOPs an image (``torch.utils.flop_counter``); training costs 3x: the
    backward computes the input's and the weights' gradients, each a product the size of the forward's."""
    from torch.utils.flop_counter import FlopCounterMode

    from tagrank.models.backbones import backbone_input

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.backbone(backbone_input(model.backbone, images))
    return counter.get_total_flops() / len(images)


def matmul_flops(n: int = 1024, times: int = 8) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    start = time.perf_counter()
    for _ in range(times):
        torch.mm(a, b)
    return 2 * n ** 3 * times / (time.perf_counter() - start)


# -- 4. metrics -------------------------------------------------------------------------------------------
def bench_metrics(repeats: int, n: int = 10_000) -> dict[str, dict]:
    from tagrank.metrics import RankingMetrics, ndcg_at_k, precision_at_k

    g = torch.Generator().manual_seed(0)
    vocab = 80
    target = torch.full((n, 7), -1, dtype=torch.long)
    for i in range(n):
        k = int(torch.randint(1, 8, (1,), generator=g))
        target[i, :k] = torch.randperm(vocab, generator=g)[:k]
    preds = torch.stack([torch.randperm(vocab, generator=g)[:10] for _ in range(n)])
    lists = [([p for p in row if p >= 0], [t for t in tr if t >= 0]) for row, tr in zip(preds.tolist(), target.tolist())]

    def ours() -> float:
        start = time.perf_counter()
        metric = RankingMetrics(10, sync_on_compute=False)
        for s in range(0, n, 1000):  # batches, as in an evaluation loop
            metric.update(preds[s:s + 1000], target[s:s + 1000])
        metric.compute()
        return time.perf_counter() - start

    def reference() -> float:
        start = time.perf_counter()
        for k in range(1, 11):
            [ndcg_at_k(p, t, k) for p, t in lists]
            [precision_at_k(p, t, k) for p, t in lists]
        return time.perf_counter() - start

    r = interleaved({"ours": ours, "reference": reference}, repeats)
    return {"metrics": figure(r["ours"], "s", r["reference"], r["reference"] / r["ours"], "< 0.5 s", r["ours"] < 0.5)}


# -- 4b. the label-query decoder ---------------------------------------------------------------------------
def bench_label_query(repeats: int, num_tags: int = 451, groups: int = 100) -> dict[str, dict]:
    """Seconds a step, each variant's steps taking turns (``4 * repeats`` rounds of one step each: 20 by
    default); the lists are random distinct tags, 1-10 of them, as Flickr8k's merged lists."""
    from tagrank.models.label_query import LabelQueryDecoder

    g = torch.Generator().manual_seed(0)
    maps = torch.randn(BATCH, 1280, 4, 4, generator=g).half()  # as the map cache holds them
    target = torch.full((BATCH, 10), -1, dtype=torch.long)
    for i in range(BATCH):
        k = int(torch.randint(1, 11, (1,), generator=g))
        target[i, :k] = torch.randperm(num_tags, generator=g)[:k]
    batch = {"features": maps, "target": target}

    def step_of(**settings) -> Callable[[], float]:
        torch.manual_seed(0)
        model = LabelQueryDecoder(num_tags, **settings).train()
        optimizer = model.configure_optimizers()

        def run() -> float:
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            model.loss(batch).backward()
            optimizer.step()
            return time.perf_counter() - start

        return run

    r = interleaved({"self_attention": step_of(self_attention=True), "cross_only": step_of(),
                     "groups": step_of(groups=groups)}, 4 * repeats)
    rate = {k: BATCH / v for k, v in r.items()}
    return {"label_query_step": figure(rate["cross_only"], "samples/s", rate["self_attention"],
                                       rate["cross_only"] / rate["self_attention"], None, None),
            "label_query_groups": figure(rate["groups"], "samples/s", rate["cross_only"],
                                                  rate["groups"] / rate["cross_only"], None, None)}


# -- 6. memory --------------------------------------------------------------------------------------------
def flickr8k_available() -> str | None:
    """Why the Flickr8k memory figure cannot run here, or None when it can."""
    return None if (SHARED / "flickr8k").is_dir() else f"{SHARED / 'flickr8k'} is absent"


def bench_memory(data: list[str], label: str) -> dict[str, dict]:
    """One short fine-tuning run (50 frozen steps, 50 fine-tuned, 2 validation batches) in a child process:
    its peak resident memory (``ru_maxrss``, which counts the pages of the memory-mapped image cache it
    touched) against the size of the two caches it reads."""
    out = Path(tempfile.mkdtemp(prefix="memory-", dir=RUNS_DIR))
    cmd = [sys.executable, "-m", "tagrank.cli.train", *data, "model.finetune_after_steps=50", "trainer.max_steps=100",
           "trainer.max_epochs=-1", "trainer.val_check_interval=50", "trainer.limit_val_batches=2",
           "trainer.check_val_every_n_epoch=null", "test=false", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={out}"]
    # A wrapper process, so that its RUSAGE_CHILDREN peak is this run's alone (ours is the max over all children).
    code = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stderr.write(p.stderr[-3000:]) if p.returncode else None; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)")
    proc = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the memory run failed: {proc.stderr[-2000:]}")
    peak = int(proc.stdout.split()[-1]) / 1024  # MiB
    cache = Path(os.environ.get("TAGRANK_CACHE", "~/.cache/tagrank")).expanduser()
    log = (out / "train.log").read_text()  # names the cache files it reused ("features: reusing <path>")
    used = [Path(w) for w in log.split() if w.startswith(str(cache)) and Path(w).is_file()]
    size = sum(p.stat().st_size for p in set(used)) / 2**20
    return {f"memory_{label}": figure(peak, "MiB", size, peak / size, None, None)}


# -- 5. conversion ----------------------------------------------------------------------------------------
def bench_convert(images: int, repeats: int) -> dict[str, dict]:
    """benchmarks/bench_coco.py: COCO at ``images`` generated training images, and the real Flickr8k."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_coco.py"), "--images", str(images),
                               "--val-images", str(max(images // 24, 100)), "--repeats", str(repeats), "--json", f.name])
        if proc.returncode != 0:
            raise RuntimeError(f"benchmarks/bench_coco.py failed (exit status {proc.returncode})")
        return json.loads(Path(f.name).read_text())


def show(name: str, f: dict) -> None:
    target = f" target {f['target']}: {'ok' if f['ok'] else 'NOT MET'}" if f["target"] else ""
    spread = f" (quartiles {f['spread'][0]:.3g}-{f['spread'][1]:.3g})" if "spread" in f else ""
    print(f"{name:<18} {f['value']:>10.4g} {f['unit']:<10} baseline {f['baseline']:>10.4g}  ratio {f['ratio']:>6.3g}"
          f"{spread}{target}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", default="head,extract,finetune,finetune_blocks,metrics,label_query,memory,convert")
    p.add_argument("--finetune-blocks", type=int, default=5, help="N of the finetune_blocks figures (5: Lite0's "
                   "blocks at 1/32 of the image size)")
    p.add_argument("--coco-images", type=int, default=30_000, help="generated COCO training images (118287: full size)")
    p.add_argument("--json", default=str(ROOT / "results" / "bench.json"))
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: per-core figures, steady on a shared machine, where two "
                        "threads that wait for each other lose several times over)")
    a = p.parse_args()
    global RUNS_DIR
    with tempfile.TemporaryDirectory(prefix="tagrank-bench-") as RUNS_DIR:
        return measure(a)


def measure(a: argparse.Namespace) -> int:
    from tagrank.quiet import quiet

    quiet()  # Lightning's tips and known warnings, as in every tagrank command
    torch.set_num_threads(a.threads)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # the memory run's child process
    only = set(a.only.split(","))
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    results: dict[str, dict] = {}

    def add(figures: dict[str, dict]) -> None:
        for name, f in figures.items():
            show(name, f)
        results.update(figures)

    if only & {"head", "extract", "finetune", "finetune_blocks"}:
        setup = Setup()
        if "head" in only:
            add(bench_head(setup, a.repeats))
        if "extract" in only:
            add(bench_extract(setup, a.repeats))
        if "finetune" in only:
            add(bench_finetune(setup, a.repeats))
        if "finetune_blocks" in only:
            add(bench_finetune_blocks(setup, a.repeats, a.finetune_blocks))
    if "metrics" in only:
        add(bench_metrics(a.repeats))
    if "label_query" in only:
        add(bench_label_query(a.repeats))
    if "memory" in only:
        add(bench_memory([], "synthetic"))
        why = flickr8k_available()
        if why:
            print(f"memory_flickr8k: skipped: {why}", flush=True)
        else:
            add(bench_memory(["data=flickr8k", f"data.root={SHARED / 'flickr8k'}"], "flickr8k"))
    if "convert" in only:
        add(bench_convert(a.coco_images, min(a.repeats, 3)))
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"load average {os.getloadavg()[0]:.2f}; written {out}")
    return 0 if all(f["ok"] is not False for f in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
