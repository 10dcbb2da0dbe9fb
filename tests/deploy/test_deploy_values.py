"""Operator-facing chart properties: every value documented, the minimal profile runs on
any cluster, the model and the database reach the pod, `make helm VALUES=...`."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) renders the chart")
pytest.importorskip("kubernetes_validate")

CORE_KINDS = {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "Secret", "ConfigMap"}


def _load_rv() -> Any:
    spec = importlib.util.spec_from_file_location("render_validate", ROOT / "k8s" / "render_validate.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["render_validate"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


rv = _load_rv()


def _leaves(d: dict[str, Any], pre: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        p = f"{pre}.{k}" if pre else k
        out += _leaves(v, p) if isinstance(v, dict) and v else [p]
    return out


def _pod(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    return dep["spec"]["template"]["spec"]


def test_every_leaf_value_is_named_in_the_values_reference() -> None:
    values = yaml.safe_load((ROOT / "k8s" / "ragturbo" / "values.yaml").read_text())
    doc = (ROOT / "docs" / "helm-values.md").read_text()
    missing = [p for p in _leaves(values) if f"`{p}`" not in doc]
    assert missing == [], f"values.yaml leaves not named in docs/helm-values.md: {missing}"


def test_minimal_profile_needs_nothing_but_core_kubernetes() -> None:
    objs = rv.render(rv.SCENARIOS["minimal"])
    assert {o["kind"] for o in objs} <= CORE_KINDS  # no ServiceMonitor, HPA or PVC
    pod = _pod(objs)
    main = pod["containers"][0]
    assert "nvidia.com/gpu" not in main["resources"].get("limits", {})
    assert not pod.get("tolerations") and not pod.get("nodeSelector")
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])
    env = {e["name"] for e in main["env"]}
    assert "RAGTURBO_MODEL_DIR" not in env  # the toy model inside the image
    (init,) = pod["initContainers"]
    assert init["args"][:4] == ["toyworld", "embedded-db", "--db", "/data"]
    assert {m["name"] for m in init["volumeMounts"]} == {"data", "tmp"}
    assert rv.validate(objs).errors == []


def test_fetch_init_container_fills_the_models_volume() -> None:
    vals = {"model": {"fetch": {"enabled": True, "image": "amazon/aws-cli:2.17.0",
                                "command": ["sh", "-c", "aws s3 cp x $MODEL_DIR.partial"]}}}
    objs = rv.render(vals)
    pod = _pod(objs)
    (init,) = pod["initContainers"]
    assert init["name"] == "fetch-model" and init["image"] == "amazon/aws-cli:2.17.0"
    assert init["command"][-3:] == ["sh", "-c", "aws s3 cp x $MODEL_DIR.partial"]
    assert "ragturbo.json" in init["command"][2]  # skipped once the model is there
    assert {"name": "MODEL_DIR", "value": "/models/model"} in init["env"]
    assert not any(m.get("readOnly") for m in init["volumeMounts"])
    models = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "models")
    assert models["readOnly"] is True
    vol = next(v for v in pod["volumes"] if v["name"] == "models")
    assert "readOnly" not in vol["persistentVolumeClaim"]
    assert rv.validate(objs).errors == []


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"model": {"source": "disk"}}, "model.source must be volume or image"),
        ({"model": {"source": "image"}, "jobs": {"trt": {"enabled": True}}}, "jobs.trt.enabled needs"),
        ({"model": {"fetch": {"enabled": True}}}, "model.fetch.command"),
    ],
)
def test_inconsistent_model_values_fail_the_render(values: dict[str, Any], needle: str) -> None:
    with pytest.raises(Exception, match=needle):
        rv.render(values)


def test_make_helm_values_renders_an_operator_file(tmp_path: Path) -> None:
    import typer

    app = typer.Typer()
    app.command()(rv.main)
    own = tmp_path / "my.yaml"
    own.write_text(yaml.safe_dump({"replicaCount": 3, "autoscaling": {"enabled": False}}))
    r = CliRunner().invoke(app, ["--out", str(tmp_path / "out"), "--values", str(own)])
    assert r.exit_code == 0, r.output
    objs = list(yaml.safe_load_all((tmp_path / "out" / "values.yaml").read_text()))
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] == 3

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"terminationGracePeriodSeconds": 1}))
    r = CliRunner().invoke(app, ["--out", str(tmp_path / "out2"), "--values", str(own), "-f", str(bad)])
    assert r.exit_code == 1


def test_merge_is_helms() -> None:
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    assert rv.merge(base, {"a": {"c": [2]}, "e": 2}) == {"a": {"b": 1, "c": [2]}, "d": 1, "e": 2}
    assert base == copy.deepcopy(base)


@pytest.mark.parametrize(("values", "needle"), [
    ({"replicaCount": "two"}, "/replicaCount': got string, want integer"),
    ({"config": {"maxBtach": 8}}, "additional properties 'maxBtach' not allowed"),
    ({"replicaCuont": 2}, "additional properties 'replicaCuont' not allowed"),
    ({"config": {"device": "gpu0"}}, "/config/device"),
])
def test_values_schema_rejects_wrong_types_and_unknown_keys(tmp_path: Path, values: dict[str, Any],
                                                            needle: str, caplog: pytest.LogCaptureFixture) -> None:
    import typer

    assert any(needle in m for m in rv.lint(values)), rv.lint(values)
    with pytest.raises(Exception, match="schema"):
        rv.render(values)
    app = typer.Typer()
    app.command()(rv.main)
    own = tmp_path / "typo.yaml"
    own.write_text(yaml.safe_dump(values))
    r = CliRunner().invoke(app, ["--out", str(tmp_path / "out"), "--values", str(own)])
    assert r.exit_code == 1 and needle in caplog.text, caplog.text


def test_device_cpu_requests_no_gpu_and_no_gpu_toleration() -> None:
    """gpu.enabled left at its default: `config.device: cpu` alone turns the GPU off."""
    pod = _pod(rv.render({"config": {"device": "cpu", "backend": "torch"}}))
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"].get("limits", {})
    assert not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
    extra = {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
    pod = _pod(rv.render({"config": {"device": "cpu"}, "tolerations": [extra]}))
    assert pod["tolerations"] == [extra]
    gpu = _pod(rv.render({}))
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t.get("key") == "nvidia.com/gpu" for t in gpu["tolerations"])
