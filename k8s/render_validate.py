"""Render the ragturbo Helm chart and validate every manifest (what `make helm` runs).

Rendering uses Helm's own Go template engine (Helm SDK v4, through the
`helm-python-sdk` wheel's `libhelm_c`), so `include`, `tpl`, `fail`, sprig and
`.Files` behave exactly as under `helm template`. No cluster is contacted.

Validation:
  * values: the chart's values.schema.json (Helm checks it in lint and in every render):
    wrong types and unknown keys are errors;
  * core kinds: `kubernetes-validate` with the Kubernetes OpenAPI schemas it
    ships (offline), in strict mode (unknown fields rejected), for every
    Kubernetes version in KUBE_VERSIONS;
  * ServiceMonitor (a CRD, absent from the core schemas): the subset schema
    in k8s/schemas/ with jsonschema.

Usage: python k8s/render_validate.py [--out DIR] [--values FILE ...]   (exit 1 on any failure)
(`make helm VALUES=my.yaml` passes your own values files, merged in order like `helm -f`.)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

log = logging.getLogger("ragturbo.k8s")

CHART = Path(__file__).resolve().parent / "ragturbo"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
# The chart's kubeVersion floor and the newest schema set shipped by kubernetes-validate.
KUBE_VERSIONS = ("1.30.0", "1.37.0")
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json"}
# Lint findings that are expected offline: the Qdrant dependency is fetched by
# `helm dependency update` on a machine that reaches its repository.
EXPECTED_LINT = ("chart directory is missing these dependencies: qdrant",)

MINIMAL_VALUES = CHART / "values-minimal.yaml"


def load_values(path: Path) -> dict[str, Any]:
    """A values file as a dict (an empty file is {}); a non-mapping is refused naming the file."""
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise TypeError(f"{path}: a values file must be a YAML mapping, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of several -f files: maps merge key by key, anything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# Value sets rendered by `make helm` and the tests: name -> values overlay.
SCENARIOS: dict[str, dict[str, Any]] = {
    # values-minimal.yaml: runs on any cluster (CPU, no CRDs, no adapter, no PVCs).
    "minimal": load_values(MINIMAL_VALUES),
    "default": {},
    "production": {
        "qdrant": {"enabled": True, "apiKey": "qdrant-secret"},
        "retrievalData": {"persistence": {"enabled": True}},
        "auth": {"apiKeys": ["key-a-0123", "key-b-4567"]},
        "jobs": {"ingest": {"enabled": True, "dataClaim": "dataset"}, "trt": {"enabled": True}},
        "model": {"persistence": {"existingClaim": "models-rox"}},
    },
    "cpu": {
        "image": {"repository": "ghcr.io/example/ragturbo-cpu"},
        "gpu": {"enabled": False},
        "config": {"backend": "torch", "device": "cpu", "maxBatch": 4, "batchBuckets": ""},
        "autoscaling": {"enabled": False},
        "serviceMonitor": {"enabled": False},
        "externalQdrant": {"url": "http://qdrant.db:6333", "apiKey": "k"},
        "tolerations": [],
    },
}


@dataclass
class Report:
    """What one render + validation produced."""

    manifests: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def render(values: dict[str, Any] | None = None, *, name: str = "rt",
           namespace: str = "ragturbo") -> list[dict[str, Any]]:
    """Render the chart with `values`; return the Kubernetes objects (NOTES.txt dropped).

    Raises helm_python.HelmRenderError when a template fails (including the
    chart's own `fail` checks, e.g. a grace period below the drain time).
    """
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values or {}, name=name, namespace=namespace,
                             is_install=True)
    objs: list[dict[str, Any]] = []
    for path in sorted(files):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(files[path]):
            if doc:
                doc.setdefault("metadata", {})
                objs.append(doc)
    return objs


def lint(values: dict[str, Any] | None = None) -> list[str]:
    """`helm lint` (with `values` as `-f` would give them) through the SDK; return unexpected
    warnings and errors. values.schema.json is checked here too: a wrong type or an unknown
    key is an error."""
    import helm_python as helm

    res = helm.lint(str(CHART), values, namespace="ragturbo", kube_version="v" + KUBE_VERSIONS[0])
    return [m["error"] for m in res["messages"]
            if m["severity"] >= 2 and m["error"] not in EXPECTED_LINT]


def _crd_validator(api_version: str, kind: str) -> Any | None:
    import jsonschema

    fname = CRD_SCHEMAS.get((api_version, kind))
    if fname is None:
        return None
    schema = json.loads((SCHEMAS / fname).read_text())
    return jsonschema.Draft202012Validator(schema)


def validate(objs: list[dict[str, Any]]) -> Report:
    """Validate each object against its schema; collect every failure."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    rep = Report(manifests=objs)
    for obj in objs:
        ident = f"{obj.get('kind')}/{obj['metadata'].get('name')}"
        crd = _crd_validator(obj.get("apiVersion", ""), obj.get("kind", ""))
        if crd is not None:
            rep.errors += [f"{ident}: {e.json_path}: {e.message}" for e in crd.iter_errors(obj)]
            continue
        for ver in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, ver, strict=True)
            except SchemaNotFoundError:
                rep.errors.append(f"{ident}: no schema for {obj.get('apiVersion')} in {ver}")
                break
            except kubernetes_validate.ValidationError as e:
                where = "/".join(str(p) for p in e.path)
                rep.errors.append(f"{ident} (k8s {ver}): {where}: {e.message}")
    return rep


def main(
    out: Annotated[Path, typer.Option(
        "--out", help="Where the rendered manifests go (one file per value set).")] = Path("out/helm"),
    values: Annotated[list[Path] | None, typer.Option(
        "--values", "-f", exists=True, dir_okay=False,
        help="Your own values file (repeatable, merged in order like helm -f); rendered and "
        "validated as the value set 'values' besides the built-in ones.")] = None,
) -> None:
    """Render the chart for every value set and validate every manifest (exit 1 on a failure)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out.mkdir(parents=True, exist_ok=True)
    scenarios = dict(SCENARIOS)
    own: dict[str, Any] | None = None
    if values:
        own = {}
        for v in values:
            own = merge(own, load_values(v))
        scenarios["values"] = own
    failed = False
    for msg in lint(own):
        log.error("lint: %s", msg)
        failed = True
    for scen, vals in scenarios.items():
        try:
            objs = render(vals)
        except Exception as e:  # noqa: BLE001 - a template failure is a finding, reported as such
            log.error("%-10s render failed: %s", scen, e)
            failed = True
            continue
        rep = validate(objs)
        (out / f"{scen}.yaml").write_text(yaml.safe_dump_all(objs, sort_keys=False))
        kinds = ", ".join(sorted({o["kind"] for o in objs}))
        log.info("%-10s %2d manifests valid=%s [%s] -> %s", scen, len(objs),
                 not rep.errors, kinds, out / f"{scen}.yaml")
        for err in rep.errors:
            log.error("  %s", err)
        failed |= bool(rep.errors)
    log.info("validated against Kubernetes %s (strict) + CRD subset schemas in %s",
             ", ".join(KUBE_VERSIONS), SCHEMAS)
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
