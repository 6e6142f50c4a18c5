"""Turning config nodes into objects with errors a user can act on.

Hydra's ``instantiate`` reports a wrong key or type as a nested traceback from deep inside a
constructor. Before instantiating, :func:`instantiate` checks each key of a node against the
target's signature, type hints and declared ranges (``Annotated[int, Gt(0)]``: see
:data:`PositiveInt`), and names the full key (``model.hidden_size``), what was given and what was
expected. :func:`console_main` gives Hydra's own errors (an unknown key or option, a malformed
override) the same one line and exit status 2.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import logging
import operator
import os
import re
import shutil
import signal
import sys
import traceback
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import hydra
from annotated_types import Ge, Gt, Interval
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from tagrank import config_options
from tagrank.errors import TagrankError
from tagrank.quiet import quiet

log = logging.getLogger("tagrank")

# Ranges declared where a setting is defined (constructor signatures, Source fields), checked before
# anything is built: ``hidden_size: PositiveInt = 300``.
PositiveInt = Annotated[int, Gt(0)]
NonNegativeInt = Annotated[int, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
Fraction = Annotated[float, Interval(ge=0, lt=1)]  # a dropout rate
Seed = Annotated[int, Interval(ge=0, le=2 ** 32 - 1)]  # what lightning.seed_everything takes

BOUNDS = {"gt": (operator.gt, ">"), "ge": (operator.ge, ">="), "lt": (operator.lt, "<"), "le": (operator.le, "<=")}


def value_matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if origin is Annotated:
        return value_matches(value, typing.get_args(hint)[0])
    if origin in (typing.Union, types.UnionType):
        return any(value_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
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
    if typing.get_origin(hint) is Annotated:
        return describe_type(typing.get_args(hint)[0])
    if typing.get_origin(hint) is typing.Literal:
        return f"one of {list(typing.get_args(hint))}"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[int]: "int or null"
        args = typing.get_args(hint)
        literal = [v for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        rest = ["null" if a is type(None) else describe_type(a) for a in args if typing.get_origin(a) is not typing.Literal]
        return " or ".join(([f"one of {literal}"] if literal else []) + rest)
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def broken_range(value: Any, hint: Any) -> str | None:
    """The range ``value`` is outside of (``"> 0"``, ``">= 0 and < 1"``), from the ``annotated_types``
    bounds of an ``Annotated`` hint; None when it is inside or the hint declares none."""
    if typing.get_origin(hint) is not Annotated or value is None:
        return None
    bounds = [b for meta in hint.__metadata__ for b in (meta if isinstance(meta, Interval) else [meta])]
    wanted, inside = [], True
    for bound in bounds:
        for attr, (op, sign) in BOUNDS.items():
            if getattr(bound, attr, None) is not None:
                wanted.append(f"{sign} {getattr(bound, attr)}")
                inside = inside and op(value, getattr(bound, attr))
    return None if inside else " and ".join(wanted)


def check_value(key: str, value: Any, hint: Any) -> None:
    """One setting against its type hint and declared range: a wrong one is one line naming it."""
    if not value_matches(value, hint):
        if typing.get_origin(hint) is typing.Literal:
            raise TagrankError(f"{key}={value!r} is not {describe_type(hint)}")
        raise TagrankError(f"{key}={value!r} has the wrong type: expected {describe_type(hint)}")
    wanted = broken_range(value, hint)
    if wanted:
        raise TagrankError(f"{key}={value!r} is out of range: expected {describe_type(hint)} {wanted}")


def check_node(node: DictConfig, key: str) -> None:
    """Check a ``_target_`` node's keys, value types and ranges against its target's signature, recursively."""
    target = hydra.utils.get_object(node._target_) if "_target_" in node else None
    if target is None:
        raise TagrankError(f"{key}: expected a config with _target_")
    fn = target.__init__ if inspect.isclass(target) else target
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
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
        plain = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else node[name]
        check_value(full, plain, hints.get(name, inspect.Parameter.empty))


def instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    check_node(node, key)
    try:
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except hydra.errors.InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, TagrankError):
            raise cause from None
        # A constructor's own check (Lightning's on its Trainer arguments): its message, on one line.
        raise TagrankError(f"{key}: {one_line(str(cause or err))}") from err


# Loggers and callbacks come from their own config groups (logger=, callbacks.*), not trainer.*.
NOT_TRAINER_SETTINGS = ("self", "logger", "callbacks", "plugins")


def trainer_arguments() -> dict[str, Any]:
    """``lightning.Trainer``'s arguments and their defaults, but for :data:`NOT_TRAINER_SETTINGS`; a default
    that is not a plain number, bool or string is None.

    Read from Lightning's source (``ast``) rather than by importing it: importing Lightning (and torch)
    takes seconds, and every command composes its config before it does any work, so a mistake on the
    command line or ``--help`` would wait for it. tests/test_configs.py checks that this is what
    ``inspect.signature(lightning.Trainer)`` gives. Where the source is not there to read (a Lightning
    installed as bytecode only, or one that moved the file), Lightning is imported instead.
    """
    spec = importlib.util.find_spec("lightning")  # finds the package without importing it
    source = Path(spec.origin).parent / "pytorch" / "trainer" / "trainer.py" if spec and spec.origin else None
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
        init = next(f for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "Trainer"
                    for f in c.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    except (AttributeError, OSError, SyntaxError, StopIteration):
        return imported_trainer_arguments()
    args = init.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = [*zip(positional, defaults), *zip(args.kwonlyargs, args.kw_defaults)]
    return {a.arg: plain_default(d) for a, d in pairs if a.arg not in NOT_TRAINER_SETTINGS}


def plain_default(node: ast.expr | None) -> Any:
    try:
        value = ast.literal_eval(node) if node is not None else None
    except (ValueError, TypeError, SyntaxError):  # an expression (a constant's name, a call)
        return None
    return value if isinstance(value, (bool, int, float, str)) else None


def imported_trainer_arguments() -> dict[str, Any]:
    """:func:`trainer_arguments` from the imported ``lightning.Trainer`` (seconds)."""
    from lightning import Trainer

    params = inspect.signature(Trainer.__init__).parameters.values()
    return {p.name: p.default if isinstance(p.default, (bool, int, float, str)) else None
            for p in params if p.name not in NOT_TRAINER_SETTINGS}


def register_trainer_schema() -> None:
    """Every ``lightning.Trainer`` argument with Lightning's default, as the base of conf/trainer/default.yaml.

    So ``trainer.limit_val_batches=2`` needs no ``+``, a misspelt key is still an error, and the
    arguments of a newer Lightning appear by themselves (they are read from its source).
    """
    fields = [("_target_", str, dataclasses.field(default="lightning.Trainer"))]
    fields += [(name, Any, dataclasses.field(default=default)) for name, default in trainer_arguments().items()]
    schema = dataclasses.make_dataclass("TrainerSchema", fields)
    ConfigStore.instance().store(group="schema", name="trainer", node=schema)


register_trainer_schema()


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def one_line(text: str) -> str:
    text = text.split("\nConfig search path:")[0].strip()  # Hydra's list of where it looked
    return re.sub(r"\s*\n\s*", "; ", re.sub(r":\s*\n\s*", ": ", text))


def user_message(err: Exception) -> str:
    """One line for a user error, also for Hydra's (an unknown key names the keys there are)."""
    cause = err.__cause__
    if (isinstance(err, CompactHydraException) and isinstance(cause, (ConfigAttributeError, ConfigKeyError))
            and isinstance(cause.parent_node, DictConfig)):
        node = cause.parent_node
        where = cause.full_key.rsplit(".", 1)[0] if "." in cause.full_key else "the config"
        options = config_options(cause.full_key) if where == "the config" else []
        if options:  # data.x=... where no data is chosen (tagrank-eval)
            return (f"no {cause.full_key} settings are chosen in this config, so there are none to change; choose "
                    f"them first: {cause.full_key}=<one of {options}> before {cause.full_key}.<setting>=...")
        known = [str(k) for k in node if not str(k).startswith("_")]
        # A group of entries (callbacks, logger) takes new ones; a constructor's settings are what they are.
        adding = f" (a new entry needs a +: +{cause.full_key}=...)" if "_target_" not in node else ""
        return f"{cause.full_key} is not a setting of {where}; expected one of {known}{adding}"
    missing = next((e for e in (err, cause) if isinstance(e, MissingMandatoryValue)), None)
    if missing is not None:  # a ??? in the config: a setting the command must give
        return f"{missing.full_key} is required: pass {missing.full_key}=..."
    if isinstance(err, OverrideParseException):
        key, _, value = (err.override or "").partition("=")
        if not value.isascii() and value[:1] not in "'\"":
            # Hydra's override grammar takes letters outside ASCII (a photo named ünïcödé_写真.jpg) only in a
            # quoted value, and its lexer says LexerNoViableAltException with a caret: say what to type.
            return (f"{err.override}: a value with letters outside ASCII must be quoted for Hydra: pass "
                    f"\"{key}='{value}'\" (the double quotes are for the shell)")
        return one_line(f"{err.override}: {err}")
    if isinstance(err, MissingConfigException):  # Hydra lists the groups' shared pieces (model/_staged) as options
        return one_line(re.sub(r"\n\t_[^\n]*", "", str(err)))
    if isinstance(err, CompactHydraException) and isinstance(cause, OmegaConfBaseException):
        return one_line(f"{err}\n{cause}")
    return one_line(str(err))


USER_ERRORS = (TagrankError, CompactHydraException, OmegaConfBaseException)


def user_error_exit(err: Exception) -> typing.NoReturn:
    print(f"tagrank: error: {user_message(err)}", file=sys.stderr)
    sys.exit(2)


def run_cli(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point's task; a user error is one clear line and exit status 2, no traceback.

    In a multirun the error is raised instead, so the sweeper records a failed trial and goes on.
    Framework messages a user cannot act on are filtered first (:func:`tagrank.quiet.quiet`).
    """
    quiet()
    try:
        return task(cfg)
    except USER_ERRORS as err:
        if in_multirun():
            raise
        user_error_exit(err)
    except BrokenPipeError:  # stdout closed by its reader (`| head`): stop quietly, as a killed writer would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        sys.exit(128 + signal.SIGPIPE)


def console_main(hydra_main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` entry point as a console script: Hydra's own errors (an unknown key or
    config option, a malformed override) are user errors too, one line and exit status 2, as are those
    of a multirun's jobs (raised after the sweep); a crash keeps its traceback and exit status 1.
    """
    traces = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user asked for full tracebacks
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then lets errors through instead of printing them and exiting 1
    try:
        hydra_main()
    except USER_ERRORS as err:
        if traces:
            raise
        user_error_exit(err)
    except KeyboardInterrupt:  # Ctrl-C: the cleanup (temporary files and folders) has run on the way here
        if traces:
            raise
        print("tagrank: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except ValueError as err:  # the Optuna sweeper, at the end of a search in which no trial completed
        # Its best trial asked for: "No trials are completed yet." (in memory), "Record does not exist." (a database)
        from_optuna = any("/optuna/" in frame.filename for frame in traceback.extract_tb(err.__traceback__))
        if traces or not from_optuna or str(err) not in ("No trials are completed yet.", "Record does not exist."):
            raise
        user_error_exit(TagrankError("no trial of the search completed (each one's error is above): there is no best "
                                     "one to report"))
    except RuntimeError as err:  # submitit's launcher (launcher=slurm) on a machine without SLURM
        if traces or "srun" not in str(err) or shutil.which("srun"):
            raise
        user_error_exit(TagrankError("launcher=slurm submits the jobs to SLURM, and this machine has no srun: run "
                                     "the command on the cluster's login node, or use launcher=local"))
