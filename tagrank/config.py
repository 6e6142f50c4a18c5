"""Turning config nodes into objects with errors a user can act on.

Hydra's ``instantiate`` reports a wrong key or type as a nested traceback from deep inside a
constructor. Before instantiating, :func:`instantiate` checks each key of a node against the
target's signature and type hints, and names the full key (``model.hidden_size``), what was given and
what was expected.
"""

from __future__ import annotations

import inspect
import logging
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tagrank.errors import TagrankError

log = logging.getLogger("tagrank")


def value_matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(value_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple, ListConfig)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return all(value_matches(v, args[0] if origin is list or len(args) == 1 else a) for v, a in zip(value, args * len(value))) if args else True
    return True  # objects built by nested _target_ nodes and anything else: trust the constructor


def describe_type(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_node(node: DictConfig, key: str) -> None:
    """Check a ``_target_`` node's keys and value types against its target's signature, recursively."""
    target = hydra.utils.get_object(node._target_) if "_target_" in node else None
    if target is None:
        raise TagrankError(f"{key}: expected a config with _target_")
    fn = target.__init__ if inspect.isclass(target) else target
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for name in node:
        if str(name).startswith("_"):
            continue
        full = f"{key}.{name}"
        value = node._get_node(name)
        if isinstance(value, DictConfig) and "_target_" in value:
            check_node(value, full)
            continue
        if name not in sig.parameters:
            if takes_kwargs:
                continue
            allowed = [p for p in sig.parameters if p not in ("self", "num_tags")]
            raise TagrankError(f"{full} is not a setting of {node._target_}; expected one of {allowed}")
        hint = hints.get(name, inspect.Parameter.empty)
        plain = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else node[name]
        if not value_matches(plain, hint):
            raise TagrankError(f"{full}={plain!r} has the wrong type: expected {describe_type(hint)}")


def instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    check_node(node, key)
    try:
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except hydra.errors.InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, TagrankError):
            raise cause from None
        raise TagrankError(f"{key}: {err}") from err


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_cli(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point's task; a user error is one clear line and exit status 2, no traceback.

    In a multirun the error is raised instead, so the sweeper records a failed trial and goes on.
    """
    try:
        return task(cfg)
    except (TagrankError, OmegaConfBaseException) as err:
        if in_multirun():
            raise
        message = str(err).strip().replace("\n", "; ") if isinstance(err, OmegaConfBaseException) else str(err)
        print(f"tagrank: error: {message}", file=sys.stderr)
        sys.exit(2)
