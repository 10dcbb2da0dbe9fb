"""The response's signals of fit (in process, fake engine): each neighbour's λ and whether
it was used, ok vs weak, the server's min_score, unknown words, and their counters."""

from __future__ import annotations

from service_fakes import FakeT2I
from test_service_app import client


def test_a_weak_retrieval_says_so_and_is_counted() -> None:
    with client(lambda _: FakeT2I(vocabulary={"a", "red", "circle"})) as c:
        ok = c.post("/generate", json={"prompt": "a red circle", "seed": 1, "retrieval": {"k": 2}}).json()
        weak = c.post("/generate", json={"prompt": "a weak ring", "seed": 1}).json()
        metrics = c.get("/metrics").text
    assert ok["retrieval_status"] == "ok" and ok["min_score"] == 0.5
    assert [(n["score"], n["weight"], n["used"]) for n in ok["retrieved"]] == [(0.9, 0.9, True), (0.8, 0.8, True)]
    assert ok["unknown_words"] == []
    assert weak["retrieval_status"] == "weak"
    assert weak["retrieved"] == [{"id": "id0", "caption": "caption 0", "score": 0.9, "weight": 0.0, "used": False}]
    assert weak["unknown_words"] == ["weak", "ring"]
    assert "ragturbo_retrieval_weak_total 1.0" in metrics
    assert "ragturbo_unknown_word_requests_total 1.0" in metrics


def test_a_model_without_vocabulary_reports_null() -> None:
    with client() as c:
        r = c.post("/generate", json={"prompt": "zzzz qqqq 12345", "seed": 1}).json()
        off = c.post("/generate", json={"prompt": "a red circle", "retrieval": {"mode": "off"}}).json()
    assert r["unknown_words"] is None and "unknown_words" in r
    assert off["retrieval_status"] == "off" and off["retrieved"] == []


def test_openapi_documents_the_fit_fields() -> None:
    with client() as c:
        doc = c.get("/openapi.json").json()
    comps = doc["components"]["schemas"]
    gen = comps["GenerateResponse"]
    assert set(gen["required"]) >= {"retrieval_status", "min_score", "unknown_words", "retrieved"}
    assert gen["properties"]["retrieval_status"]["enum"] == ["ok", "weak", "unavailable", "off"]
    assert set(comps["NeighbourOut"]["required"]) == {"id", "caption", "score", "weight", "used"}
