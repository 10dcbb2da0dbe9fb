"""Ingest: exact-caption retrieval, idempotence, bad rows, SIGKILL + resume, model changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_pairs, write_jsonl
from PIL import Image

from retrieval.db import DbConfig, open_db_for_pipeline
from retrieval.ingest import ingest, read_captions
from retrieval.types import FingerprintMismatchError

REPO = Path(__file__).resolve().parents[2]


def test_exact_caption_query_returns_that_pair_first(pipe, shared_db) -> None:  # type: ignore[no-untyped-def]
    db, rows = shared_db
    caps = [rows[3]["caption"], rows[11]["caption"]]
    res = db.search(pipe.encode_text(caps).pooled, 3)
    assert [r[0].caption for r in res] == caps
    assert all(r[0].score > 0.9999 for r in res)
    assert res[0][0].score >= res[0][1].score >= res[0][2].score
    feats = db.features([res[0][0].id])
    assert feats.shape == (1, *pipe.h_shape)


def test_features_equal_pipeline_h_at_t0(pipe, shared_db, dataset) -> None:  # type: ignore[no-untyped-def]
    db, rows = shared_db
    root, _ = dataset
    img = np.asarray(Image.open(root / rows[5]["file"]).convert("RGB"))[None]
    ref = pipe.retrieval_features(
        pipe.encode_images(img), pipe.encode_text([rows[5]["caption"]]).context
    )
    nid = db.search(pipe.encode_text([rows[5]["caption"]]).pooled, 1)[0][0].id
    got = db.features([nid]).float()
    # fp16 storage and a different encoder batch: equal to fp16 precision, far from other pairs
    assert torch.allclose(got, ref.float(), rtol=2e-3, atol=2e-3)
    other = db.features(
        [db.search(pipe.encode_text([rows[6]["caption"]]).pooled, 1)[0][0].id]
    ).float()
    assert (other - ref).abs().max() > 0.05


def test_reingest_adds_no_duplicates_and_adds_new(pipe, ingested, dataset, db_config) -> None:  # type: ignore[no-untyped-def]
    db, rows = ingested
    root, _ = dataset
    rep = ingest(pipe, db, root, rows, batch=8, progress=False)
    assert rep.added == 0 and rep.already_present == 16
    assert db.count() == 16 and len(db.store) == 16
    extra = make_pairs(root / "more", 3, start=100)
    rows2 = rows + [{"file": f"more/{r['file']}", "caption": r["caption"]} for r in extra]
    rep = ingest(pipe, db, root, rows2, batch=8, progress=False)
    assert (rep.added, rep.already_present) == (3, 16)
    assert db.count() == 19 and len(db.store) == 19


def test_bad_rows_are_skipped_and_reported(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "imgs"
    rows = make_pairs(root, 3)
    (root / "junk.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "tiny.png")
    Image.fromarray(np.full((90, 120, 3), 200, np.uint8)).save(root / "wide.png")
    rows += [
        {"file": "nope.png", "caption": "a missing file"},
        {"file": "img0.png", "caption": "   "},
        {"file": "junk.png", "caption": "junk"},
        {"file": "tiny.png", "caption": "too small"},
        {"file": "wide.png", "caption": "a wide picture, resized"},
        rows[0],  # same pair twice in one file
    ]
    db = open_db_for_pipeline(DbConfig(db_path=tmp_path / "db"), pipe, create=True)
    rej = tmp_path / "rejects.jsonl"
    rep = ingest(pipe, db, root, rows, rejects_path=rej, progress=False)
    reasons = {r.file: r.reason for r in rep.rejects}
    assert set(reasons) == {"nope.png", "img0.png", "junk.png", "tiny.png"}
    assert reasons["nope.png"].startswith("missing file")
    assert reasons["img0.png"] == "empty caption"
    assert reasons["junk.png"].startswith("unreadable image")
    assert reasons["tiny.png"].startswith("too small")
    assert rep.added == 4 and rep.duplicates == 1 and db.count() == 4
    lines = [json.loads(x) for x in rej.read_text().splitlines()]
    assert {x["file"] for x in lines} == set(reasons) and all(x["reason"] for x in lines)
    assert "4 rejected" in rep.summary()
    db.close()


def test_read_captions_formats(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"file": "a.png", "caption": "x"}, {"file": "b.png", "caption": "y, with comma"}]
    write_jsonl(tmp_path / "c.jsonl", rows)
    (tmp_path / "c.csv").write_text('file,caption\na.png,x\nb.png,"y, with comma"\n')
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    lines = {"jsonl": [1, 2], "csv": [2, 3], "parquet": [1, 2]}  # 1-based; csv: header is 1
    for ext in ("jsonl", "csv", "parquet"):
        got = read_captions(tmp_path / f"c.{ext}")
        assert [{"file": r["file"], "caption": r["caption"]} for r in got] == rows
        assert [r["line"] for r in got] == lines[ext]
    (tmp_path / "bad.csv").write_text("path,text\na,b\n")
    with pytest.raises(ValueError, match="'file' and 'caption'"):
        read_captions(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match=".jsonl, .csv or .parquet"):
        read_captions(tmp_path / "c.txt")


def _cli(*args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from ragturbo.cli import main; sys.argv[0]='ragturbo'; main()",
        *args,
    ]


def _consistent(pipe, db_path: Path) -> int:  # type: ignore[no-untyped-def]
    """Every indexed point has features; returns the number of indexed points."""
    db = open_db_for_pipeline(DbConfig(db_path=db_path), pipe)
    try:
        ids = list(db.store.ids())
        in_index = sum(db.index.contains(ids))
        assert db.index.count() == in_index, "a point is indexed without features"
        if ids:
            assert db.features(ids).shape[0] == len(ids)
        return in_index
    finally:
        db.close()


def test_sigkilled_ingest_leaves_nothing_torn_and_resumes(pipe, model_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "imgs"
    rows = make_pairs(root, 20)
    caps = write_jsonl(tmp_path / "caps.jsonl", rows)
    dbp = tmp_path / "db"
    args = _cli(
        "ingest",
        "--images",
        str(root),
        "--captions",
        str(caps),
        "--db",
        str(dbp),
        "--model-dir",
        str(model_dir),
        "--batch",
        "2",
        "--commit-every",
        "2",
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    manifest = dbp / "features" / "manifest.json"
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.loads(manifest.read_text())["shards"]) >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, f"ingest finished before it could be killed: {proc.stderr.read()!r}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = _consistent(pipe, dbp)
    assert 0 < n_before < 20
    # resume in-process (same code path as the CLI, without a second interpreter start)
    db = open_db_for_pipeline(DbConfig(db_path=dbp), pipe, create=True)
    try:
        rep = ingest(pipe, db, root, read_captions(caps), batch=4, progress=False)
    finally:
        db.close()
    assert (
        rep.already_present >= n_before
        and rep.added + rep.already_present == 20
        and not rep.rejects
    )
    assert _consistent(pipe, dbp) == 20


def test_fingerprint_mismatch_refused(pipe, other_model_dir, ingested, db_config) -> None:  # type: ignore[no-untyped-def]
    from engines.pipeline import OneStepPipeline

    other = OneStepPipeline.from_pretrained(other_model_dir)
    assert other.fingerprint != pipe.fingerprint
    with pytest.raises(FingerprintMismatchError) as e:
        open_db_for_pipeline(db_config, other)
    assert pipe.fingerprint in str(e.value) and other.fingerprint in str(e.value)


def test_rebuild_features_for_a_new_model(pipe, other_model_dir, ingested, db_config) -> None:  # type: ignore[no-untyped-def]
    from engines.pipeline import OneStepPipeline
    from retrieval.ingest import rebuild_features

    db, rows = ingested
    db.close()
    other = OneStepPipeline.from_pretrained(other_model_dir)
    assert rebuild_features(other, db_config, progress=False) == 16
    db2 = open_db_for_pipeline(db_config, other)
    try:
        res = db2.search(other.encode_text([rows[7]["caption"]]).pooled, 1)
        assert res[0][0].caption == rows[7]["caption"] and res[0][0].score > 0.9999
        assert db2.count() == 16 and len(db2.store) == 16
    finally:
        db2.close()
    with pytest.raises(FingerprintMismatchError):
        open_db_for_pipeline(db_config, pipe)


def test_one_bad_row_never_aborts_an_ingest(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A lone surrogate in a caption and a malformed JSON line are rejects."""
    root = tmp_path / "imgs"
    rows = make_pairs(root, 2)
    caps = tmp_path / "captions.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines.insert(1, '{"file": "img0.png", "caption": "x \\ud800"}')  # valid JSON, bad text
    lines.insert(2, '{"file": "img1.png", "caption": ')  # truncated line
    lines.insert(3, '["not", "an", "object"]')
    caps.write_text("\n".join(lines) + "\n", encoding="utf-8")
    got = read_captions(caps)
    assert len(got) == 5
    db = open_db_for_pipeline(DbConfig(db_path=tmp_path / "db"), pipe, create=True)
    rej = tmp_path / "rejects.jsonl"
    rep = ingest(pipe, db, root, got, rejects_path=rej, progress=False)
    assert rep.added == 2 and db.count() == 2
    reasons = sorted(r.reason for r in rep.rejects)
    assert len(reasons) == 3
    assert any(r.startswith("invalid caption: not valid Unicode") for r in reasons)
    assert any(r.startswith("not valid JSON: line 3") for r in reasons)
    assert any(r.startswith("not a JSON object: line 4") for r in reasons)
    assert len(rej.read_text(encoding="utf-8").splitlines()) == 3
    db.close()


def test_files_outside_the_images_dir_are_rejected_unless_allowed(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Paths like "../outside.png", absolute paths and symlinks out are not read."""
    root = tmp_path / "imgs"
    rows = make_pairs(root, 1)
    outside = make_pairs(tmp_path / "elsewhere", 3, start=50)
    (root / "link.png").symlink_to(tmp_path / "elsewhere" / outside[2]["file"])
    bad = [
        {"file": f"../elsewhere/{outside[0]['file']}", "caption": outside[0]["caption"]},
        {"file": str(tmp_path / "elsewhere" / outside[1]["file"]), "caption": "absolute"},
        {"file": "link.png", "caption": "a symlink out"},
    ]
    db = open_db_for_pipeline(DbConfig(db_path=tmp_path / "db"), pipe, create=True)
    rep = ingest(pipe, db, root, rows + bad, progress=False)
    assert rep.added == 1 and db.count() == 1
    assert len(rep.rejects) == 3 and all(r.reason.startswith("outside --images") for r in rep.rejects)
    rep = ingest(pipe, db, root, rows + bad, progress=False, allow_outside=True)
    assert rep.added == 3 and rep.already_present == 1 and db.count() == 4
    db.close()


def test_invalid_bytes_fifo_and_line_numbers_in_the_rejects(pipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One invalid UTF-8 byte rejects its row only (csv and jsonl, never U+FFFD-ingested);
    a FIFO among the images is a reject, not a hang; each reject names its 1-based line
    and an unreadable line keeps its raw text in the rejects file."""
    import os

    root = tmp_path / "imgs"
    rows = make_pairs(root, 3)
    os.mkfifo(root / "pipe.png")
    csv_path = tmp_path / "c.csv"
    csv_path.write_bytes(
        b"file,caption\n"
        + f"{rows[0]['file']},{rows[0]['caption']}\n".encode()
        + f"{rows[1]['file']},bad \xff byte\n".encode("latin-1")
        + b"pipe.png,a fifo\n"
        + f"{rows[2]['file']},{rows[2]['caption']}\n".encode()
    )
    jsonl_path = tmp_path / "c.jsonl"
    jsonl_path.write_bytes(
        json.dumps(rows[0]).encode() + b"\n"
        + b'{"file": "' + rows[1]["file"].encode() + b'", "caption": "bad \xfe"}\n'
        + b'{"file": "x.png", "caption": \n'
        + json.dumps(rows[2]).encode() + b"\n"
    )
    for path, want in ((csv_path, {3: "not valid UTF-8", 4: "not a regular file"}),
                       (jsonl_path, {2: "not valid UTF-8", 3: "not valid JSON"})):
        db = open_db_for_pipeline(DbConfig(db_path=tmp_path / f"db-{path.suffix}"), pipe, create=True)
        rej = tmp_path / f"rejects{path.suffix}.jsonl"
        rep = ingest(pipe, db, root, read_captions(path), rejects_path=rej, progress=False)
        assert rep.added == 2 and db.count() == 2, rep.summary()
        assert {r.line: r.reason.split(":")[0] for r in rep.rejects} == want
        caps = {db.store.row(i)["caption"] for i in db.store.ids()}
        assert not any("\ufffd" in c for c in caps)
        written = [json.loads(x) for x in rej.read_text().splitlines()]
        bad = next(w for w in written if w["reason"].startswith("not valid UTF-8"))
        assert "\\xf" in bad["raw"] and bad["line"] == min(want)  # the line as written
        db.close()
