"""Settings: env parsing, bounds, choices and cross-field checks with values in the message."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.settings import Settings, settings_error_message


def test_env_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTURBO_MAX_BATCH", "4")
    monkeypatch.setenv("RAGTURBO_BATCH_BUCKETS", "8, 1,4")
    monkeypatch.setenv("RAGTURBO_API_KEYS", "key-one-123,key-two-456")
    monkeypatch.setenv("RAGTURBO_DEVICE", "cpu")
    s = Settings()
    assert s.max_batch == 4 and s.batch_buckets == [1, 4, 8]
    assert [k.get_secret_value() for k in s.api_keys] == ["key-one-123", "key-two-456"]
    assert s.bucket_for(3) == 4 and s.bucket_for(1) == 1
    assert "key-one" not in repr(s)
    assert s.max_prompt_chars == 1000 and s.backend == "torch"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RAGTURBO_MAX_BATCH": "0"}, "RAGTURBO_MAX_BATCH"),
        ({"RAGTURBO_BACKEND": "tensorflow"}, "'tensorflow'"),
        ({"RAGTURBO_MAX_QUEUE": "many"}, "'many'"),
        ({"RAGTURBO_DEVICE": "gpu0"}, "'gpu0'"),
        ({"RAGTURBO_MAX_BATCH": "16", "RAGTURBO_BATCH_BUCKETS": "1,2,4"}, "max_batch=16"),
        ({"RAGTURBO_METRICS_REQUIRE_KEY": "true"}, "api_keys"),
        ({"RAGTURBO_BACKEND": "tensorrt", "RAGTURBO_DEVICE": "cpu", "RAGTURBO_ENGINE_DIR": "e"}, "device='cpu'"),
    ],
)
def test_invalid_settings_name_the_value(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError) as e:
        Settings()
    assert expected in settings_error_message(e.value)


def test_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTURBO_API_KEYS", "short")
    with pytest.raises(ValidationError) as e:
        Settings()
    assert "short" not in settings_error_message(e.value)


def test_serve_refuses_invalid_settings_at_startup() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ragturbo.cli", "serve"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={"RAGTURBO_MAX_WAIT_MS": "-3", "PATH": ""},
    )
    assert r.returncode == 2
    assert "RAGTURBO_MAX_WAIT_MS" in r.stderr and "'-3'" in r.stderr


def test_graph_backends_need_their_directories(monkeypatch) -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="RAGTURBO_ONNX_DIR"):
        Settings(backend="onnxruntime", device="cpu")
    with pytest.raises(ValidationError, match="RAGTURBO_ENGINE_DIR"):
        Settings(backend="tensorrt", device="cuda:0")
    s = Settings(backend="onnxruntime", device="cpu", onnx_dir="out/onnx")
    assert str(s.onnx_dir) == "out/onnx"


def test_unknown_ragturbo_variable_is_named_with_the_closest_setting() -> None:
    from service.settings import unknown_env

    env = {"RAGTURBO_MAXBATCH": "4", "RAGTURBO_MAX_BATCH": "2", "RAGTURBO_LOG_LEVEL": "debug",
           "RAGTURBO_SHIPPED_MODEL_DIR": "/m", "RAGTURBO_ZZZQQQ": "1", "HOME": "/root"}
    assert unknown_env(env) == [
        "unknown setting RAGTURBO_MAXBATCH is ignored; did you mean RAGTURBO_MAX_BATCH?",
        "unknown setting RAGTURBO_ZZZQQQ is ignored",
    ]


def test_serve_warns_about_an_unknown_variable_at_start(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    import service.logs
    import service.server
    from ragturbo import serve as cli

    monkeypatch.setenv("RAGTURBO_MAXBATCH", "4")
    monkeypatch.setenv("RAGTURBO_DEVICE", "cpu")
    monkeypatch.setattr(service.server, "serve", lambda settings: None)  # start, do not listen
    monkeypatch.setattr(service.logs, "configure_logging", lambda *a: None)  # keep caplog's handler
    with caplog.at_level("WARNING"):
        cli.serve(host=None, port=None, embedded_db=False)
    assert "unknown setting RAGTURBO_MAXBATCH is ignored; did you mean RAGTURBO_MAX_BATCH?" in caplog.text
