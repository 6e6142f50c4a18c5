"""Read what wandb wrote for an offline run, without a server: the records of ``run-<id>.wandb``.

The file is a LevelDB-style log (wandb's "datastore"): a 7-byte header (``:W&B``, magic 0xBEE1,
version), then 32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type: full, first,
middle, last) carrying one serialised ``wandb_internal_pb2.Record``. wandb no longer ships a reader
for it in Python, and ``wandb.Api`` needs a server, so the tests read it here.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path):
    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a wandb run file")
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the rest of a block too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            parts = chunk
        elif kind == MIDDLE:
            parts += chunk
        elif kind == LAST:
            yield parts + chunk
            parts = b""


@dataclass
class OfflineRun:
    dir: Path
    run_id: str = ""
    group: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifact_files: list[tuple[str, str]] = field(default_factory=list)  # (path in artifact, local file)

    def keys(self) -> set[str]:
        return {k for row in self.history for k in row}

    def values(self, key: str) -> list[Any]:
        return [row[key] for row in self.history if key in row]


def _parse(raw: bytes) -> pb.Record:
    record = pb.Record()
    record.ParseFromString(raw)
    return record


def read_offline_run(run_dir: Path, wait_s: float = 60) -> OfflineRun:
    """Config, history rows and staged artifact files of one finished ``offline-run-*`` directory.

    ``wandb.finish()`` can return before wandb's writer process has written the last records, so this
    waits (up to ``wait_s``) for the run's closing ``exit`` record.
    """
    run_dir = Path(run_dir)
    (wandb_file,) = run_dir.glob("run-*.wandb")
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        try:
            records = [_parse(raw) for raw in raw_records(wandb_file)]
        except Exception:  # caught the file mid-write: read it again
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.2)
    else:
        raise TimeoutError(f"{wandb_file}: no exit record after {wait_s}s (the run did not finish)")
    run = OfflineRun(run_dir)
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.group = record.run.run_id, record.run.run_group
            run.config.update({i.key: json.loads(i.value_json) for i in record.run.config.update if i.key})
        elif kind == "config":
            run.config.update({i.key: json.loads(i.value_json) for i in record.config.update if i.key})
        elif kind == "history":
            run.history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                for i in record.history.item})
        elif kind == "artifact":
            run.artifact_files += [(e.path, e.local_path) for e in record.artifact.manifest.contents]
    return run


def offline_runs(root: Path) -> list[OfflineRun]:
    """Every (finished) offline run under ``root`` (e.g. ``<run>/wandb``), oldest first."""
    return [read_offline_run(d) for d in sorted(Path(root).glob("**/offline-run-*")) if d.is_dir()]
