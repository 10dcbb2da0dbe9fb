"""The Helm chart renders with Helm's engine and every manifest validates; key
operational properties hold on the rendered objects."""

from __future__ import annotations

import copy
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) renders the chart")
pytest.importorskip("kubernetes_validate")


def _load_rv() -> Any:
    spec = importlib.util.spec_from_file_location("render_validate", ROOT / "k8s" / "render_validate.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["render_validate"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


rv = _load_rv()


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: rv.render(values) for name, values in rv.SCENARIOS.items()}


def _one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def _container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("scenario", list(rv.SCENARIOS))
def test_every_manifest_validates(rendered, scenario: str) -> None:
    rep = rv.validate(rendered[scenario])
    assert rep.errors == []
    # minimal: Deployment, Service, ServiceAccount, PDB only (no CRD, PVC, HPA, ConfigMap)
    assert len(rep.manifests) >= (4 if scenario == "minimal" else 7)


def test_lint_has_no_unexpected_findings() -> None:
    assert rv.lint() == []


def test_validator_rejects_a_misspelt_field(rendered) -> None:
    dep = copy.deepcopy(_one(rendered["default"], "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/x"
    sm = copy.deepcopy(_one(rendered["default"], "ServiceMonitor"))
    sm["spec"]["endpoints"][0]["interval"] = "fifteen seconds"
    errors = rv.validate([dep, sm]).errors
    assert any("pth" in e for e in errors)
    assert any(e.startswith("ServiceMonitor/") and "fifteen" in e for e in errors)


def test_probes_point_at_the_service_routes(rendered) -> None:
    c = _container(rendered["default"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    start = c["startupProbe"]
    assert start["httpGet"]["path"] == "/readyz"
    # engine load + warm-up: at least 5 minutes before liveness may kill the pod
    assert start["periodSeconds"] * start["failureThreshold"] >= 300
    assert c["ports"][0]["containerPort"] == 8000


def test_security_context_is_locked_down(rendered) -> None:
    pod = _one(rendered["default"], "Deployment")["spec"]["template"]["spec"]
    sc = _container(rendered["default"])["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    # a read-only root needs writable scratch
    mounts = {m["mountPath"] for m in _container(rendered["default"])["volumeMounts"]}
    assert {"/tmp", "/data"} <= mounts


def test_grace_period_covers_prestop_and_drain(rendered) -> None:
    pod = _one(rendered["default"], "Deployment")["spec"]["template"]["spec"]
    c = _container(rendered["default"])
    drain = int(_env(c)["RAGTURBO_DRAIN_TIMEOUT_S"])
    pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    # the service exits within DRAIN_TIMEOUT_S + 1 s of SIGTERM (tests/service/test_service_drain.py)
    assert pod["terminationGracePeriodSeconds"] >= pre + drain + 1


def test_grace_period_keeps_a_second_for_the_exit_even_without_margin() -> None:
    import helm_python as helm

    objs = rv.render({"config": {"drainTimeoutS": 20}, "lifecycle": {"shutdownMarginS": 0}})
    pod = _one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 5 + 20 + 1
    with pytest.raises(helm.HelmRenderError, match="killed mid-drain"):
        rv.render(
            {
                "config": {"drainTimeoutS": 20},
                "lifecycle": {"shutdownMarginS": 0},
                "terminationGracePeriodSeconds": 25,
            }
        )


def test_grace_period_below_drain_is_refused() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError, match="killed mid-drain"):
        rv.render({"config": {"drainTimeoutS": 60}, "terminationGracePeriodSeconds": 40})
    objs = rv.render({"config": {"drainTimeoutS": 60}})
    assert _one(objs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 65


def test_gpu_resource_requested_only_when_enabled(rendered) -> None:
    gpu = _container(rendered["default"])["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == 1
    cpu = _container(rendered["cpu"])["resources"].get("limits", {})
    assert "nvidia.com/gpu" not in cpu
    trt = [o for o in rendered["production"] if o["kind"] == "Job" and "trt" in o["metadata"]["name"]]
    assert trt and trt[0]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_hpa_reads_the_queue_metric_and_owns_replicas(rendered) -> None:
    hpa = _one(rendered["default"], "HorizontalPodAutoscaler")
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert "ragturbo_queue_depth" in names
    assert "replicas" not in _one(rendered["default"], "Deployment")["spec"]
    assert _one(rendered["cpu"], "Deployment")["spec"]["replicas"] == 2
    adapter = (ROOT / "k8s" / "prometheus-adapter" / "values.yaml").read_text()
    for name in names:
        assert f'as: "{name}"' in adapter, f"HPA metric {name} has no prometheus-adapter rule"


def test_pdb_and_servicemonitor_select_the_pods(rendered) -> None:
    objs = rendered["default"]
    labels = _one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget",):
        sel = _one(objs, kind)["spec"]["selector"]["matchLabels"]
        assert sel.items() <= labels.items()
    svc = _one(objs, "Service")
    sm = _one(objs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


def test_api_keys_come_from_a_secret(rendered) -> None:
    objs = rendered["production"]
    secret = _one(objs, "Secret")
    env = _env(_container(objs))
    ref = env["RAGTURBO_API_KEYS"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert secret["stringData"][ref["key"]] == "key-a-0123,key-b-4567"
    qref = env["RAGTURBO_QDRANT_API_KEY"]["secretKeyRef"]
    assert secret["stringData"][qref["key"]] == "qdrant-secret"
    # no key material in plain env values
    assert not any(isinstance(v, str) and "key-a" in v for v in env.values())
    assert "RAGTURBO_API_KEYS" not in _env(_container(rendered["default"]))
    with pytest.raises(Exception, match="8 characters"):
        rv.render({"auth": {"apiKeys": ["short"]}})


def test_qdrant_url_follows_the_dependency_or_external(rendered) -> None:
    assert _env(_container(rendered["production"]))["RAGTURBO_QDRANT_URL"] == "http://rt-qdrant:6333"
    assert _env(_container(rendered["cpu"]))["RAGTURBO_QDRANT_URL"] == "http://qdrant.db:6333"
    assert "RAGTURBO_QDRANT_URL" not in _env(_container(rendered["default"]))


def test_jobs_run_the_cli_commands(rendered) -> None:
    jobs = {o["metadata"]["name"]: o for o in rendered["production"] if o["kind"] == "Job"}
    ingest = next(j for n, j in jobs.items() if "ingest" in n)["spec"]["template"]["spec"]
    assert ingest["containers"][0]["args"][:2] == ["ingest", "--images"]
    assert "--qdrant-url" in ingest["containers"][0]["args"]
    trt = next(j for n, j in jobs.items() if "trt" in n)["spec"]["template"]["spec"]
    assert trt["initContainers"][0]["args"][:2] == ["export", "onnx"]
    assert trt["containers"][0]["args"][:2] == ["build", "trt"]
    assert "--device" in ingest["containers"][0]["args"]
    with pytest.raises(Exception, match="dataClaim"):
        rv.render({"jobs": {"ingest": {"enabled": True}}, "qdrant": {"enabled": True},
                   "retrievalData": {"persistence": {"enabled": True}}})


def test_feature_store_is_shared_between_ingest_and_serving(rendered) -> None:
    objs = rendered["production"]
    pod = _one(objs, "Deployment")["spec"]["template"]["spec"]
    serve_data = next(v for v in pod["volumes"] if v["name"] == "data")
    job = next(o for o in objs if o["kind"] == "Job" and "ingest" in o["metadata"]["name"])
    job_data = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "data")
    claim = serve_data["persistentVolumeClaim"]["claimName"]
    assert job_data["persistentVolumeClaim"]["claimName"] == claim
    pvcs = {o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"}
    assert claim in pvcs
    assert _env(_container(objs))["RAGTURBO_DB_PATH"] == "/data"
    # an ingest Job without the shared volume would write features nobody reads
    with pytest.raises(Exception, match="retrievalData"):
        rv.render({"jobs": {"ingest": {"enabled": True, "dataClaim": "d"}},
                   "qdrant": {"enabled": True}})


def test_dashboard_configmap_carries_the_dashboard(rendered) -> None:
    import json

    cm = _one([o for o in rendered["default"] if o["kind"] == "ConfigMap"], "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["ragturbo-dashboard.json"])
    assert dash["uid"] == "ragturbo-overview"
    assert re.search(r"ragturbo_queue_depth", cm["data"]["ragturbo-dashboard.json"])


def test_compile_cache_reaches_the_service_on_a_volume() -> None:
    """The fast backend's torch.compile cache: env + mount, a PVC when persistence is on."""
    objs = rv.render({"compileCache": {"persistence": {"enabled": True, "size": "20Gi"}}})
    c = _container(objs)
    assert _env(c)["RAGTURBO_COMPILE_CACHE_DIR"] == "/cache/compile"
    assert {"name": "compile-cache", "mountPath": "/cache/compile"} in c["volumeMounts"]
    pvcs = [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    cache = [p for p in pvcs if p["metadata"]["name"].endswith("-compile-cache")]
    assert len(cache) == 1 and cache[0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    vols = _one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "compile-cache", "persistentVolumeClaim": {"claimName": cache[0]["metadata"]["name"]}} in vols
    off = rv.render({"compileCache": {"enabled": False}})
    assert "RAGTURBO_COMPILE_CACHE_DIR" not in _env(_container(off))
