"""Every config composes: each model x data pair, each option of every other group (the registry is conf/)."""

from __future__ import annotations

import inspect
from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

from tagrank import CONF_DIR, config_options
from tagrank.config import check_node
from tagrank.data.sources.base import Source

from .conftest import compose_cfg

CONF = Path(CONF_DIR)
MODELS = config_options("model")  # the shared pieces (model/_staged.yaml) are no option
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


STAGED = OmegaConf.load(CONF / "model/_staged.yaml")


@pytest.mark.parametrize("model", MODELS)
def test_the_staged_schedule_is_set_once_for_the_methods_that_use_it(model, tmp_path):
    """Every method trained by gradient steps gets the optimiser and fine-tuning settings from
    model/_staged.yaml (its defaults), at the values of the class's own defaults; no model config
    repeats one of them (a config may override one: model=lstm_tuned's lr)."""
    from tagrank.models.base import StagedTagger

    cfg = compose_cfg([f"model={model}"], tmp_path, tmp_path)
    cls = hydra.utils.get_class(cfg.model._target_)
    raw = OmegaConf.load(CONF / f"model/{model}.yaml")
    assert not [k for k in STAGED if k in raw and raw[k] == STAGED[k]], f"model/{model}.yaml repeats _staged.yaml"
    if not issubclass(cls, StagedTagger):
        assert not set(STAGED) & set(cfg.model)
        return
    defaults = inspect.signature(cls.__init__).parameters
    for key, value in STAGED.items():
        assert key in cfg.model
        assert _plain(value) == _plain(defaults[key].default), key
        if key not in raw:  # not overridden here (model=lstm_tuned's lr is)
            assert _plain(cfg.model[key]) == _plain(value), key


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else value


def test_the_trainer_schema_read_from_lightning_s_source_is_its_signature():
    """tagrank.config reads Trainer's arguments from Lightning's source so that composing a config (every
    command does it first) does not import Lightning; what it reads is what the imported class says."""
    from tagrank.config import NOT_TRAINER_SETTINGS, imported_trainer_arguments, trainer_arguments

    read = trainer_arguments()
    assert read == imported_trainer_arguments() and list(read) == list(imported_trainer_arguments())
    assert len(read) > 30 and not set(NOT_TRAINER_SETTINGS) & set(read)
    assert read["max_epochs"] is None and read["accelerator"] == "auto" and read["enable_progress_bar"] is None
