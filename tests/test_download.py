"""Downloads against a real HTTP server on the loopback interface, serving archives built here.

The server (``http.server`` in a thread, 127.0.0.1 only) supports ``Range`` requests and can cut a
transfer short, ignore ``Range``, or serve corrupted bytes, so that resuming, restarting, checksum
rejection and atomic unpacking are each exercised for real.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tagrank.data.sources.coco import CocoSource
from tagrank.data.sources.download import MARKER, download_dataset, fetch
from tagrank.data.sources.pascal07 import Pascal07Source
from tagrank.data.records import MANIFEST, read_manifest
from tagrank.data.sources.base import ensure_built
from tagrank.errors import TagrankError

from .test_converters import VOC_OBJECTS, run_prepare, write_coco, write_voc


class Server:
    """Serves ``files`` (path -> bytes); ``cut[path] = n`` cuts the next n responses of that path in half."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ignore_range = False
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                rng = self.headers.get("Range")
                server.log.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut.get(self.path, 0) > 0:
                    server.cut[self.path] -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, name: str, data: bytes) -> dict:
        self.files[f"/{name}"] = data
        return {"url": f"{self.url}/{name}", "md5": hashlib.md5(data).hexdigest()}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def zip_tree(root: Path, sub: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path in sorted((root / sub).rglob("*")):
            z.write(path, path.relative_to(root).as_posix())
    return buf.getvalue()


def tar_tree(root: Path, members: list[Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for path in members:
            t.add(path, path.relative_to(root).as_posix(), recursive=False)
    return buf.getvalue()


def coco_archives(tmp_path: Path, server: Server) -> list[dict]:
    """The three official COCO archives, in miniature: annotations, val2017, train2017."""
    src = tmp_path / "src"
    write_coco(src)
    return [server.add("annotations_trainval2017.zip", zip_tree(src, "annotations")),
            server.add("val2017.zip", zip_tree(src, "val2017")),
            server.add("train2017.zip", zip_tree(src, "train2017"))]


def test_download_resumes_verifies_unpacks_and_converts(tmp_path, server):
    archives = coco_archives(tmp_path, server)
    server.cut["/val2017.zip"] = 1  # the first transfer of val2017.zip stops half way
    dest = tmp_path / "data" / "coco"
    assert download_dataset("coco", archives, dest, retries=2) == dest.resolve()
    ranges = [r for p, r in server.log if p == "/val2017.zip"]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"  # resumed, not restarted
    assert (dest / "annotations" / "captions_train2017.json").is_file() and (dest / "val2017").is_dir()
    assert not (tmp_path / "data" / "coco.partial").exists()  # work folder (and archives) cleaned up
    assert json.loads((dest / MARKER).read_text())["archives"] == [a["url"] for a in archives]
    records = read_manifest(ensure_built(CocoSource(root=str(dest)), tmp_path / "cache") / MANIFEST)
    assert len(records) == 5
    n = len(server.log)
    download_dataset("coco", archives, dest)  # already complete: nothing fetched
    assert len(server.log) == n


def test_corrupted_archive_is_rejected_and_nothing_unpacked(tmp_path, server):
    archives = coco_archives(tmp_path, server)
    good = server.files["/val2017.zip"]
    server.files["/val2017.zip"] = good[:100] + bytes([good[100] ^ 0xFF]) + good[101:]
    dest = tmp_path / "coco"
    with pytest.raises(TagrankError, match=r"val2017\.zip: md5 checksum is [0-9a-f]{32}, expected " + archives[1]["md5"]):
        download_dataset("coco", archives, dest)
    assert not dest.exists()
    work = tmp_path / "coco.partial"
    assert not list((work / "archives").glob("val2017.zip*"))  # the bad file is deleted
    assert not (work / "tree" / "val2017").exists()
    with pytest.raises(TagrankError, match="no such folder"):  # nothing half-there can be loaded
        CocoSource(root=str(dest)).build(tmp_path)
    # once the server is fixed, the same command finishes (the annotations are not fetched again)
    server.files["/val2017.zip"] = good
    server.log.clear()
    download_dataset("coco", archives, dest)
    assert [p for p, _ in server.log] == ["/val2017.zip", "/train2017.zip"]
    assert (dest / "val2017" / "000000000010.jpg").is_file()


def test_killed_download_resumes_or_restarts_cleanly(tmp_path, server):
    data = bytes(range(256)) * 4000
    archive = server.add("big.zip", data)
    folder = tmp_path / "archives"
    folder.mkdir()
    part = folder / "big.zip.part"
    part.write_bytes(data[:300_000])  # what a killed process left behind
    assert fetch(archive, folder).read_bytes() == data
    assert server.log == [("/big.zip", "bytes=300000-")] and not part.exists()

    (folder / "big.zip").unlink()
    part.write_bytes(data[:1000])
    server.ignore_range, server.log = True, []
    assert fetch(archive, folder).read_bytes() == data  # a server without Range: start again from zero
    assert len(server.log) == 1

    (folder / "big.zip").unlink()
    part.write_bytes(b"garbage" * 1000)  # a resumed file with a corrupt start
    server.ignore_range, server.log = False, []
    assert fetch(archive, folder).read_bytes() == data
    assert [r for _, r in server.log] == ["bytes=7000-", None]  # checksum failed, so downloaded again whole

    (folder / "big.zip").unlink()
    server.cut["/big.zip"] = 10
    with pytest.raises(TagrankError, match=r"download interrupted .* the same command resumes from there"):
        fetch(archive, folder, retries=2)
    assert 0 < part.stat().st_size < len(data)
    server.cut["/big.zip"] = 0
    assert fetch(archive, folder).read_bytes() == data


def test_a_server_that_cannot_be_reached_is_retried_with_waits_and_named(tmp_path, caplog):
    with socket.socket() as s:  # a port nothing listens on: every connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    archive = {"url": f"http://127.0.0.1:{port}/big.zip", "md5": "0" * 32}
    caplog.set_level(logging.WARNING)
    with pytest.raises(TagrankError, match=r"^http://127\.0\.0\.1:\d+/big\.zip: download interrupted \(.*refused.*\) "
                                           r"after 2 retries; nothing was received$"):
        fetch(archive, tmp_path, retries=2)
    waits = [r.getMessage().split("; ")[-1] for r in caplog.records]
    assert waits == ["nothing received, trying again in 1 s (retry 1/2)", "nothing received, trying again in 2 s (retry 2/2)"]
    assert list(tmp_path.iterdir()) == []


def test_unpack_failure_leaves_no_dataset(tmp_path, server):
    archive = server.add("annotations_trainval2017.zip", b"PK\x03\x04 this is not really a zip archive")
    with pytest.raises(TagrankError, match="cannot unpack|neither a zip nor a tar"):
        download_dataset("coco", [archive], tmp_path / "coco")
    assert not (tmp_path / "coco").exists()
    assert not list((tmp_path / "coco.partial").glob("unpacking-*"))  # no half-extracted folder either
    with pytest.raises(TagrankError, match="no md5 or sha256 configured"):
        download_dataset("coco", [{"url": archive["url"]}], tmp_path / "other")
    (tmp_path / "taken").mkdir()
    with pytest.raises(TagrankError, match="exists but is not a complete download"):
        download_dataset("coco", [archive], tmp_path / "taken")
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(TagrankError, match=f"^download.dest={tmp_path / 'a.jpg' / 'coco'}: {tmp_path / 'a.jpg'} is a file"):
        download_dataset("coco", [archive], tmp_path / "a.jpg" / "coco")


def test_pascal07_tars_merge_into_one_devkit(tmp_path, server):
    src = tmp_path / "src"
    voc = write_voc(src)
    ids = list(VOC_OBJECTS)
    common = [src / "VOCdevkit", voc, voc / "JPEGImages", voc / "Annotations", voc / "ImageSets", voc / "ImageSets" / "Main"]

    def members(part_ids, image_set):
        return common + [voc / "ImageSets" / "Main" / image_set] + [
            p for i in part_ids for p in (voc / "JPEGImages" / f"{i}.jpg", voc / "Annotations" / f"{i}.xml")]

    archives = [server.add("VOCtrainval_06-Nov-2007.tar", tar_tree(src, members(ids[:3], "trainval.txt"))),
                server.add("VOCtest_06-Nov-2007.tar", tar_tree(src, members(ids[3:], "test.txt")))]
    dest = download_dataset("pascal07", archives, tmp_path / "pascal07")
    assert sorted(p.stem for p in (dest / "VOCdevkit" / "VOC2007" / "JPEGImages").iterdir()) == ids
    records = Pascal07Source(root=str(dest), order="area").build(tmp_path)
    assert len(records) == 6


@pytest.mark.parametrize("setting, message", [
    ("download.archives=5", "download.archives=5: expected a list of {url: <address>, md5: <hex>} (or sha256: <hex>)"),
    ("download.archives=[{md5:abc}]", "download.archives[0]={'md5': 'abc'}: expected {url: <address>, md5: <hex>}"),
    ("download.timeout=abc", "download.timeout='abc' has the wrong type: expected float"),
    ("download.timeout=-1", "download.timeout=-1 is out of range: expected float > 0"),
    ("download.retries=-1", "download.retries=-1 is out of range: expected int >= 0"),
    ("download.allow_unverified=maybe", "download.allow_unverified='maybe' has the wrong type: expected bool"),
])
def test_bad_download_settings_are_one_line_before_anything_is_fetched(setting, message, tmp_path):
    with pytest.raises(TagrankError) as err:
        run_prepare(["download=coco", f"download.dest={tmp_path / 'coco'}", setting], tmp_path)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert list(tmp_path.glob("coco*")) == []


def test_tagrank_data_download_command(tmp_path, server, cli_env):
    archives = coco_archives(tmp_path, server)
    spec = ",".join(f"{{url:'{a['url']}',md5:{a['md5']}}}" for a in archives)
    exe = str(Path(sys.executable).parent / "tagrank-data")
    cmd = [exe, "download=coco", f"download.dest={tmp_path / 'coco'}", f"download.archives=[{spec}]",
           f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=cli_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"convert it with: tagrank-data data=coco data.root={tmp_path / 'coco'}" in proc.stdout
    server.files["/train2017.zip"] = b"not the archive"
    cmd[2] = f"download.dest={tmp_path / 'coco2'}"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=cli_env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("tagrank: error: ")
    assert "train2017.zip: md5 checksum is" in proc.stderr
