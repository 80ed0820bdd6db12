"""deploy/'s manifests, checked offline: core kinds with kubernetes-validate (strict, a fixed Kubernetes version),
KServe kinds with check-jsonschema against the schemas in deploy/schemas/; then against Kiln itself: the container
args parse with Kiln's own parser, and the probe paths, ports and the autoscaling metric are what a real
``kiln serve`` answers and exports."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from kiln.cli.main import build_parser
from kiln.examples import models, write_model
from servers import KilnProcess

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMAS = DEPLOY / "schemas"
sys.path.insert(0, str(SCHEMAS))
import derive  # noqa: E402

K8S_VERSION = derive.K8S_VERSION
CHECK_JSONSCHEMA = str(Path(sys.executable).parent / "check-jsonschema")
KUBERNETES_VALIDATE = str(Path(sys.executable).parent / "kubernetes-validate")
Doc = dict[str, Any]


def load(relative: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all((DEPLOY / relative).read_text()) if d]


def one(relative: str, kind: str) -> Doc:
    (doc,) = [d for d in load(relative) if d["kind"] == kind]
    return doc


def container(doc: Doc) -> Doc:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]
    return spec["containers"][0]


# ---- core kinds: kubernetes-validate, strict --------------------------------------------------------------------

CORE_FILES = ["kubernetes/kiln.yaml", "kubernetes/hpa.yaml", "kubernetes/prometheus-adapter.yaml"]


def test_core_manifests_are_valid_in_strict_mode() -> None:
    kinds = set()
    for relative in CORE_FILES:
        for doc in load(relative):
            assert (
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION.rsplit(".", 1)[0]
            )
            kinds.add(doc["kind"])
    assert kinds == {"PersistentVolumeClaim", "Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"}


def test_kubernetes_validate_cli_passes_and_fails(tmp_path: Path) -> None:
    files = [str(DEPLOY / f) for f in CORE_FILES]
    done = subprocess.run(
        [KUBERNETES_VALIDATE, "--strict", "-k", K8S_VERSION, *files], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text((DEPLOY / "kubernetes/kiln.yaml").read_text().replace("readinessProbe:", "readinesProbe:"))
    done = subprocess.run(
        [KUBERNETES_VALIDATE, "--strict", "-k", K8S_VERSION, str(bad)], capture_output=True, text=True
    )
    assert done.returncode != 0 and "readinesProbe" in done.stdout + done.stderr


def _rename(d: Doc, old: str, new: str) -> None:
    d[new] = d.pop(old)


KILN, HPA = "kubernetes/kiln.yaml", "kubernetes/hpa.yaml"


def _hpa_target(d: Doc) -> Doc:
    return d["spec"]["metrics"][0]["pods"]["target"]


CORE_BREAKAGES: dict[str, tuple[str, str, Callable[[Doc], None]]] = {
    "misspelt probe": (KILN, "Deployment", lambda d: _rename(container(d), "livenessProbe", "livenesProbe")),
    "replicas as text": (KILN, "Deployment", lambda d: d["spec"].update(replicas="two")),
    "port as a list": (KILN, "Deployment", lambda d: container(d)["readinessProbe"]["grpc"].update(port=[8001])),
    "unknown securityContext field": (
        KILN, "Deployment", lambda d: container(d)["securityContext"].update(runAsNonroot=True)
    ),
    "misspelt service port": (KILN, "Service", lambda d: _rename(d["spec"]["ports"][0], "targetPort", "tagetPort")),
    "HPA target misspelt": (HPA, "HorizontalPodAutoscaler", lambda d: _rename(_hpa_target(d), "averageValue", "x")),
    "HPA maxReplicas as text": (HPA, "HorizontalPodAutoscaler", lambda d: d["spec"].update(maxReplicas="8")),
}  # fmt: skip


@pytest.mark.parametrize("breakage", list(CORE_BREAKAGES))
def test_broken_core_manifests_are_rejected(breakage: str) -> None:
    relative, kind, mutate = CORE_BREAKAGES[breakage]
    doc = copy.deepcopy(one(relative, kind))
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    mutate(doc)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# ---- KServe kinds: check-jsonschema against the derived schemas ------------------------------------------------

KSERVE = {
    "ServingRuntime": ("kserve/servingruntime.yaml", SCHEMAS / "servingruntime-v1alpha1.json"),
    "InferenceService": ("kserve/inferenceservice.yaml", SCHEMAS / "inferenceservice-v1beta1.json"),
}


def _model(d: Doc) -> Doc:
    return d["spec"]["predictor"]["model"]


KSERVE_BREAKAGES: dict[str, list[tuple[str, Callable[[Doc], None]]]] = {
    "ServingRuntime": [
        (
            "misspelt spec field",
            lambda d: _rename(d["spec"], "supportedModelFormats", "supportedModelFormat"),
        ),
        ("protocolVersions as text", lambda d: d["spec"].update(protocolVersions="v2")),
        ("autoSelect as text", lambda d: d["spec"]["supportedModelFormats"][0].update(autoSelect="yes")),
        ("misspelt container field", lambda d: _rename(d["spec"]["containers"][0], "image", "imagee")),
        (
            "probe port as a list",
            lambda d: d["spec"]["containers"][0]["readinessProbe"]["httpGet"].update(port=[8080]),
        ),
        ("no containers", lambda d: d["spec"].pop("containers")),
        ("wrong apiVersion", lambda d: d.update(apiVersion="serving.kserve.io/v1beta1")),
        ("misspelt metadata field", lambda d: _rename(d["metadata"], "labels", "label")),
    ],
    "InferenceService": [
        ("misspelt predictor field", lambda d: _rename(d["spec"]["predictor"], "model", "modle")),
        ("modelFormat as text", lambda d: _model(d).update(modelFormat="triton")),
        ("storageUri as a number", lambda d: _model(d).update(storageUri=5)),
        ("no modelFormat", lambda d: _model(d).pop("modelFormat")),
        ("minReplicas as text", lambda d: d["spec"]["predictor"].update(minReplicas="1")),
        ("misspelt resources field", lambda d: _rename(_model(d)["resources"], "limits", "limit")),
        ("no predictor", lambda d: d["spec"].pop("predictor")),
        ("wrong kind", lambda d: d.update(kind="InferenceServices")),
    ],
}


def check_jsonschema(schema: Path, files: list[Path]) -> dict[str, list[str]]:
    """check-jsonschema's verdict: file name -> its error messages (none: valid)."""
    cmd = [CHECK_JSONSCHEMA, "-o", "JSON", "--schemafile", str(schema), *map(str, files)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    report = json.loads(done.stdout)
    assert not report["parse_errors"], report
    errors: dict[str, list[str]] = {str(f): [] for f in files}
    for error in report["errors"]:
        errors[error["filename"]].append(f"{error['path']}: {error['message']}")
    assert (done.returncode == 0) == (not any(errors.values())), done
    return errors


@pytest.mark.parametrize("kind", list(KSERVE))
def test_kserve_manifests_pass_and_broken_ones_fail(kind: str, tmp_path: Path) -> None:
    relative, schema = KSERVE[kind]
    good = DEPLOY / relative
    files = [good]
    for i, (_, mutate) in enumerate(KSERVE_BREAKAGES[kind]):
        doc = yaml.safe_load(good.read_text())
        mutate(doc)
        files.append(tmp_path / f"broken-{i}.yaml")
        files[-1].write_text(yaml.safe_dump(doc))
    errors = check_jsonschema(schema, files)
    assert errors[str(good)] == []
    for path, (what, _) in zip(files[1:], KSERVE_BREAKAGES[kind], strict=True):
        assert errors[str(path)], f"{kind} with {what} passed"


def test_schemas_name_their_source() -> None:
    for _, schema_path in KSERVE.values():
        schema = json.loads(schema_path.read_text())
        assert derive.KSERVE_WHEEL_SHA256 in schema["$comment"]
        assert f"v{K8S_VERSION}-local-strict" in schema["$comment"]
        assert schema["additionalProperties"] is False


def _fake_wheel(path: Path) -> Path:
    """A wheel holding two generated-style SDK classes: a spec with a required field and a Kubernetes type."""
    import zipfile

    source = """
class V1alpha1ServingRuntime(object):
    openapi_types = {"api_version": "str", "kind": "str", "metadata": "V1ObjectMeta", "spec": "V1alpha1Spec"}
    attribute_map = {"api_version": "apiVersion", "kind": "kind", "metadata": "metadata", "spec": "spec"}

class V1alpha1Spec(object):
    openapi_types = {"containers": "list[V1Container]", "multi_model": "bool", "labels": "dict(str, str)"}
    attribute_map = {"containers": "containers", "multi_model": "multiModel", "labels": "labels"}
    def containers(self, containers):
        raise ValueError("Invalid value for `containers`, must not be `None`")  # noqa: E501
"""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("kserve/models/v1alpha1_serving_runtime.py", source)
    return path


def test_derive_closes_kserve_objects_and_embeds_kubernetes_types(tmp_path: Path) -> None:
    import jsonschema

    models_ = derive.load_models(_fake_wheel(tmp_path / "fake.whl"))
    schema = derive.Deriver(models_, derive.load_k8s_definitions(K8S_VERSION)).document("ServingRuntime")
    validator = jsonschema.Draft202012Validator(schema)
    good = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "c", "image": "i"}], "multiModel": False, "labels": {"a": "b"}},
    }
    validator.validate(good)
    for bad in (
        {**good, "spec": {**good["spec"], "multimodel": False}},  # KServe object: closed
        {**good, "spec": {"multiModel": False}},  # required field
        {**good, "spec": {**good["spec"], "labels": {"a": 1}}},  # map values typed
        {**good, "spec": {"containers": [{"name": "c", "imag": "i"}]}},  # Kubernetes type: strict
        {**good, "metadata": {"nmae": "x"}},
    ):
        assert not validator.is_valid(bad), bad


@pytest.mark.skipif(
    "KSERVE_WHEEL" not in __import__("os").environ, reason="set KSERVE_WHEEL=path/to/kserve wheel"
)
def test_committed_schemas_are_what_derive_writes(tmp_path: Path) -> None:
    import os

    assert derive.main(["--wheel", os.environ["KSERVE_WHEEL"], "--out", str(tmp_path)]) == 0
    for _, schema_path in KSERVE.values():
        assert (tmp_path / schema_path.name).read_text() == schema_path.read_text(), schema_path.name


# ---- the manifests against Kiln itself ---------------------------------------------------------------------------


def serve_args(c: Doc) -> Any:
    assert c["command"] == ["kiln"]  # the console script the image puts on PATH
    args = build_parser().parse_args(c["args"])
    assert args.command == "serve"
    return args


def test_deployment_matches_kilns_flags() -> None:
    deployment = one("kubernetes/kiln.yaml", "Deployment")
    pod = deployment["spec"]["template"]
    c = container(deployment)
    args = serve_args(c)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port}
    assert args.host == "0.0.0.0"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert args.model_repository == [Path(mounts["models"])]
    assert args.exit_timeout_secs < pod["spec"]["terminationGracePeriodSeconds"]
    assert c["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["readinessProbe"]["grpc"] == {"port": args.grpc_port}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(args.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    service = one("kubernetes/kiln.yaml", "Service")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_deployment_matches_the_image() -> None:
    containerfile = (DEPLOY / "Containerfile").read_text()
    user = re.search(r"^USER (\d+):(\d+)$", containerfile, re.M)
    assert user, "Containerfile has no numeric USER"
    security = one("kubernetes/kiln.yaml", "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (int(user[1]), int(user[2]))
    assert security["runAsNonRoot"] is True
    exposed = re.search(r"^EXPOSE (.+)$", containerfile, re.M)
    assert exposed
    c = container(one("kubernetes/kiln.yaml", "Deployment"))
    assert sorted(int(p) for p in exposed[1].split()) == sorted(p["containerPort"] for p in c["ports"])


def test_kserve_runtime_matches_kilns_flags_and_the_inference_service() -> None:
    runtime = one("kserve/servingruntime.yaml", "ServingRuntime")
    c = container(runtime)
    args = serve_args(c)
    assert args.model_repository == [
        Path("/mnt/models")
    ]  # where KServe's storage initializer puts storageUri
    assert args.host == "0.0.0.0"
    assert [p["containerPort"] for p in c["ports"]] == [args.http_port]
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert c[probe]["httpGet"] == {"path": path, "port": args.http_port}
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == str(args.metrics_port)
    assert c["securityContext"]["runAsNonRoot"] is True
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert formats == {"onnx", "triton"}
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    model = _model(one("kserve/inferenceservice.yaml", "InferenceService"))
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]


def adapter_rule() -> Doc:
    config = yaml.safe_load(one("kubernetes/prometheus-adapter.yaml", "ConfigMap")["data"]["config.yaml"])
    (rule,) = config["rules"]
    return rule


def test_hpa_metric_is_the_adapter_rate_of_the_queue_counter() -> None:
    rule = adapter_rule()
    series = re.match(r"^(\w+)\{", rule["seriesQuery"])
    assert series and series[1] == "nv_inference_queue_duration_us"
    # prometheus-adapter renames with a Go regexp replacement: ${1} is group 1
    exposed = re.sub(rule["name"]["matches"], rule["name"]["as"].replace("${1}", r"\1"), series[1])
    hpa = one("kubernetes/hpa.yaml", "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == exposed == "nv_inference_queue_duration_us_per_second"
    assert "rate(<<.Series>>{<<.LabelMatchers>>}[" in rule["metricsQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert (
        hpa["spec"]["scaleTargetRef"]["name"] == one("kubernetes/kiln.yaml", "Deployment")["metadata"]["name"]
    )


@pytest.fixture(scope="module")
def kiln_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    repo = tmp_path_factory.mktemp("deploy-repo")
    write_model(repo, "add_sub", models.add_sub(["batch", 4]), None)
    proc = KilnProcess([repo], log_dir=tmp_path_factory.mktemp("deploy-logs")).start()
    yield proc
    assert proc.stop() == 0, proc.log()


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode()


def test_probe_endpoints_and_metric_are_real(kiln_server: KilnProcess) -> None:
    deployment, runtime = (
        one("kubernetes/kiln.yaml", "Deployment"),
        one("kserve/servingruntime.yaml", "ServingRuntime"),
    )
    http_paths = {
        probe["httpGet"]["path"]
        for c in (container(deployment), container(runtime))
        for probe in (c.get("startupProbe"), c.get("livenessProbe"), c.get("readinessProbe"))
        if probe and "httpGet" in probe
    }
    assert http_paths == {"/v2/health/live", "/v2/health/ready"}
    for path in http_paths:
        assert _get(f"http://{kiln_server.http_url}{path}")[0] == 200
    # the Deployment's gRPC readiness probe: grpc.health.v1 Check with the default (empty) service name
    service = container(deployment)["readinessProbe"]["grpc"].get("service", "")
    with grpc.insecure_channel(kiln_server.grpc_url) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    status, text = _get(f"http://127.0.0.1:{kiln_server.metrics_port}{annotations['prometheus.io/path']}")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    series = re.match(r"^(\w+)\{", adapter_rule()["seriesQuery"])
    assert series
    family = families[series[1]]
    assert family.type == "counter"  # a counter: the adapter rule must rate() it
    assert {s.labels["model"] for s in family.samples} == {"add_sub"}
