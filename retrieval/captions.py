"""Reading the captions table of an ingest: .jsonl, .csv or .parquet -> rows.

Each row is ``{"file", "caption", "line"}``: ``line`` is the 1-based line of the row in
the file (jsonl: the physical line, counted on ``\\n`` only; csv: the line the record
starts on, the header being line 1; parquet: the row number, from 1). A row that cannot
be read -- a jsonl line that is not valid UTF-8, not JSON or not an object, a csv record
with bytes that are not UTF-8 -- gets an ``error`` (the reject reason) and ``raw`` (the
line as written, undecodable bytes shown as ``\\xNN``) instead of failing the file; the
ingest rejects it and goes on.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

_SURROGATE = re.compile("[\udc80-\udcff]")


def _utf8_error(raw: bytes) -> str | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"byte 0x{raw[e.start]:02x} at column {e.start + 1}"
    return None


def _shown(raw: bytes) -> str:
    return raw.rstrip(b"\r").decode("utf-8", errors="backslashreplace")


def _jsonl(p: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n, raw in enumerate(p.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        bad = _utf8_error(raw)
        obj: Any = {}
        if bad is None:
            try:
                obj = json.loads(raw.decode("utf-8"))
            except json.JSONDecodeError as e:
                bad = f"not valid JSON: line {n}: {e.msg} (column {e.colno})"
            else:
                if not isinstance(obj, dict):
                    bad = f"not a JSON object: line {n}"
        else:
            bad = f"not valid UTF-8: line {n}: {bad}"
        row = dict(obj) if bad is None else {}
        row["line"] = n
        if bad is not None:
            row["error"], row["raw"] = bad, _shown(raw)
        rows.append(row)
    return rows


def _csv(p: Path) -> list[dict[str, Any]]:
    # surrogateescape keeps every byte: a record with invalid UTF-8 is found and rejected
    # alone, the rest of the file is read as usual.
    text = p.read_bytes().decode("utf-8", errors="surrogateescape")
    lines = text.split("\n")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    _ = reader.fieldnames  # reads the header
    rows: list[dict[str, Any]] = []
    start = reader.line_num + 1
    for rec in reader:
        row: dict[str, Any] = {**rec, "line": start}
        if any(isinstance(v, str) and _SURROGATE.search(v) for v in rec.values()):
            raw = "\n".join(lines[start - 1 : reader.line_num]).encode("utf-8", "surrogateescape")
            why = _utf8_error(raw) or "undecodable bytes"
            row = {"line": start, "raw": _shown(raw), "error": f"not valid UTF-8: line {start}: {why}"}
        rows.append(row)
        start = reader.line_num + 1
    return rows


def read_captions(path: str | Path) -> list[dict[str, Any]]:
    """Rows ``{"file", "caption", "line"}`` (+ ``error``, ``raw``) from .jsonl, .csv or
    .parquet (other columns ignored); see the module docstring."""
    p = Path(path)
    suf = p.suffix.lower()
    if suf in (".jsonl", ".ndjson"):
        rows = _jsonl(p)
    elif suf == ".csv":
        rows = _csv(p)
    elif suf == ".parquet":
        import pyarrow.parquet as pq

        rows = [{**r, "line": i} for i, r in enumerate(pq.read_table(p).to_pylist(), 1)]
    else:
        raise ValueError(f"captions file {p} must end in .jsonl, .csv or .parquet (got {suf!r})")
    good = [r for r in rows if "error" not in r]
    if good and not any("file" in r and "caption" in r for r in good):
        cols = sorted(k for k in good[0] if k != "line")
        raise ValueError(f"captions file {p} needs columns 'file' and 'caption'; got {cols}")
    out: list[dict[str, Any]] = []
    for r in rows:
        row: dict[str, Any] = {
            "file": str(r.get("file") or ""),
            "caption": str(r.get("caption") or ""),
            "line": int(r["line"]),
        }
        if "error" in r:
            row["error"], row["raw"] = r["error"], r["raw"]
        out.append(row)
    return out
