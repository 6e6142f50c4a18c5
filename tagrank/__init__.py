"""tagrank: ranked image annotation with relative visual importance, on Lightning + Hydra."""

from pathlib import Path

# The Hydra config tree, shipped inside the package (tagrank/conf/), so a wheel installed anywhere has it.
CONF_DIR = str(Path(__file__).resolve().parent / "conf")


def config_options(group: str) -> list[str]:
    """The options of a config group (``model`` -> ``['frequency', 'lstm', ...]``): its yaml files, but for
    those named ``_*.yaml``, which are pieces its options share (``model/_staged.yaml``), not options."""
    return sorted(f.stem for f in (Path(CONF_DIR) / group).glob("[!_]*.yaml"))
