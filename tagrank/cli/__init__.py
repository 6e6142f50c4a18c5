"""The command-line front door: one module a command, named after its console script (tagrank-<name>).

Each module holds its task (``train``, ``evaluate``, ``prepare``, ``predict``, ``export``) and gets its
``main`` from :func:`command`, the one Hydra entry they share: compose ``tagrank/conf/<config>.yaml``
with the command line, run the task with user errors as one line and exit status 2."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from tagrank import CONF_DIR
from tagrank.config import console_main, run_cli


def command(config_name: str, task: Callable[[DictConfig], Any]) -> Callable[[], None]:
    """The console script that runs ``task`` on ``tagrank/conf/<config_name>.yaml`` composed with the
    command line. What ``task`` returns goes back to Hydra (``tagrank-train`` gives a sweeper its metric).
    The run's log file is ``<task_name>.log`` (``hydra.job.name`` in ``conf/hydra/default.yaml``)."""

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)
    def hydra_main(cfg: DictConfig) -> Any:
        return run_cli(task, cfg)

    def main() -> None:
        console_main(hydra_main)

    return main
