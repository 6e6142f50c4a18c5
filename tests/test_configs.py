"""Every config composes: each model x data pair, each option of every other group (the registry is conf/)."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

from tagrank import CONF_DIR
from tagrank.config import check_node
from tagrank.data.sources.base import Source

from .conftest import compose_cfg

CONF = Path(CONF_DIR)
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
GROUPS = ["backbone", "trainer", "logger", "callbacks", "debug", "experiment", "launcher", "hparams_search"]


def test_registry_is_not_empty():
    assert "lstm" in MODELS and "synthetic" in DATA


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("model", MODELS)
def test_model_x_data_composes(model, data, tmp_path):
    cfg = compose_cfg([f"model={model}", f"data={data}"], tmp_path, tmp_path)
    check_node(cfg.model, "model")  # every key is a real, well-typed constructor argument
    source = hydra.utils.get_class(cfg.data.source)
    assert issubclass(source, Source)
    assert hydra.utils.get_class(cfg.data._target_)
    # Everything resolves except values the user must supply (e.g. data.root for real datasets).
    plain = OmegaConf.to_container(cfg.model, resolve=True)
    assert plain["backbone"] == cfg.backbone.name


def _options():
    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            yield f"{group}={path.stem}"


@pytest.mark.parametrize("override", list(_options()))
def test_every_group_option_composes(override, tmp_path):
    cfg = compose_cfg([override], tmp_path, tmp_path)
    for name in ("logger", "callbacks"):
        for key, node in (cfg.get(name) or {}).items():
            if node:
                check_node(node, f"{name}.{key}")
    check_node(cfg.trainer, "trainer")
