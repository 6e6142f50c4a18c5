"""tagrank: ranked image annotation with relative visual importance, on Lightning + Hydra."""

from pathlib import Path

# The Hydra config tree at the repository root (the package is installed in editable mode).
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
