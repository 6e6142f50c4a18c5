"""A large JSON file read element by element, in constant memory (:func:`json_items`).

It is hand-written on the standard
library's C decoder because the files that need it hold several large arrays (COCO's instances file:
images, annotations, categories), and ijson's fast C path (``items``) reads one array prefix per pass
over the file: ``benchmarks/bench_coco.py`` took 2.0x (order=captions) and 2.3x (order=area) as long
with it, at about the same peak memory. On a file with one large array (Karpathy's) it was 1.1x.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tagrank.errors import TagrankError

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
MAX_ELEMENT = 64 << 20  # characters; a longer unparsable element is reported as malformed


class _JsonReader:
    """A JSON text read in chunks, decoded one value at a time (C decoder, no whole-file load)."""

    def __init__(self, path: Path, chunk: int = 1 << 22) -> None:
        self.path, self.chunk = path, chunk
        self.f = open(path, encoding="utf-8-sig")  # noqa: SIM115 (closed by json_items)
        self.buf, self.pos, self.eof = "", 0, False
        self.consumed_chars, self.consumed_lines = 0, 0

    def fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.f.read(self.chunk)
        except UnicodeDecodeError as err:
            self.fail(f"not UTF-8 text ({err.reason})")
        if not data:
            self.eof = True
            return False
        done = self.buf[: self.pos]
        self.consumed_chars += len(done)
        self.consumed_lines += done.count("\n")
        self.buf, self.pos = self.buf[self.pos:] + data, 0
        return True

    def fail(self, message: str, at: int | None = None) -> None:
        at = self.pos if at is None else at
        line = self.consumed_lines + self.buf.count("\n", 0, at) + 1
        raise TagrankError(f"{self.path}:{line}: malformed JSON at character {self.consumed_chars + at}: {message}")

    def peek(self) -> str:
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self.fill():
                return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            self.fail(f"expected one of {' '.join(repr(x) for x in chars)}, found {c or 'the end of the file'!r}")
        self.pos += 1
        return c

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # else a number may go on in the next chunk
                    self.pos = end
                    return obj
            except json.JSONDecodeError as err:
                if self.eof or len(self.buf) - self.pos > MAX_ELEMENT:
                    # json's own messages end in "... at" before the position, which fail() gives
                    self.fail(err.msg.removesuffix(" starting at").removesuffix(" at"), err.pos)
            self.fill()


def json_items(path: Path, chunk: int = 1 << 22) -> Iterator[tuple[str, int | None, Any]]:
    """``(key, index, element)`` for each element of each top-level array, ``(key, None, value)`` otherwise.

    Memory is one chunk plus one element, whatever the file size; a syntax error names file, line and
    character offset.
    """
    r = _JsonReader(path, chunk)
    try:
        r.expect("{")
        if r.peek() == "}":
            r.pos += 1
        else:
            while True:
                if r.peek() != '"':
                    r.fail("expected a key")
                key = r.value()
                r.expect(":")
                if r.peek() == "[":
                    r.pos += 1
                    index = 0
                    if r.peek() == "]":
                        r.pos += 1
                    else:
                        while True:
                            yield key, index, r.value()
                            index += 1
                            if r.expect(",]") == "]":
                                break
                else:
                    yield key, None, r.value()
                if r.expect(",}") == "}":
                    break
        if r.peek():
            r.fail("extra data after the top-level object")
    finally:
        r.f.close()
