"""Derive JSON schemas for KServe's ServingRuntime and InferenceService from KServe's Python SDK.

The SDK's models (``kserve/models/*.py`` in the ``kserve`` wheel) are generated from the same Go API types
(``pkg/apis/serving``) that controller-gen renders into KServe's CRDs (``config/crd/full/``): one class per
object, ``openapi_types`` (field -> type), ``attribute_map`` (field -> JSON name), and setters that refuse
``None`` for the required fields. KServe's objects become closed schemas (``additionalProperties: false``, as a
structural CRD prunes or, with strict field validation, rejects unknown fields). The Kubernetes types they embed
(``V1Container``, ``V1Probe``, ``V1ObjectMeta``, ...) are taken from kubernetes-validate's strict schemas for
``K8S_VERSION``, so containers and pod fields are checked as strictly as core kinds.

    .venv/bin/python deploy/schemas/derive.py                  # pip-downloads the pinned wheel, checks its hash
    .venv/bin/python deploy/schemas/derive.py --wheel kserve-0.21.0-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate

KSERVE_VERSION = "0.21.0"
KSERVE_WHEEL = f"kserve-{KSERVE_VERSION}-py3-none-any.whl"
KSERVE_WHEEL_SHA256 = "df9bc5888704d9085015e08f1a8fced5ff0698f3becc6212d4e7b8234c71623b"
K8S_VERSION = "1.36.0"
HERE = Path(__file__).resolve().parent
# kind -> (SDK class, apiVersion, output file)
KINDS: dict[str, tuple[str, str, str]] = {
    "ServingRuntime": (
        "V1alpha1ServingRuntime",
        "serving.kserve.io/v1alpha1",
        "servingruntime-v1alpha1.json",
    ),
    "InferenceService": (
        "V1beta1InferenceService",
        "serving.kserve.io/v1beta1",
        "inferenceservice-v1beta1.json",
    ),
}
_SCALARS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "object": {},
    "datetime": {"type": "string"},
}
_K8S_GROUPS = ("io.k8s.api.core.v1", "io.k8s.apimachinery.pkg.apis.meta.v1")
_K8S_REF = "/api/_definitions.json#/$defs/"
_K8S_NAMES = {"ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity"}  # SDK names outside V1*
_REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")


@dataclass(frozen=True)
class Model:
    """One generated SDK class: its fields' types and JSON names, and which fields are required."""

    name: str
    types: dict[str, str]
    json_names: dict[str, str]
    required: frozenset[str]


def _class_dicts(tree: ast.Module) -> Iterator[tuple[str, dict[str, str], dict[str, str]]]:
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        found: dict[str, dict[str, str]] = {}
        for stmt in node.body:
            if (
                isinstance(stmt, ast.Assign)
                and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name)
            ):
                if stmt.targets[0].id in ("openapi_types", "attribute_map"):
                    found[stmt.targets[0].id] = ast.literal_eval(stmt.value)
        if len(found) == 2:
            yield node.name, found["openapi_types"], found["attribute_map"]


def load_models(wheel: Path) -> dict[str, Model]:
    models: dict[str, Model] = {}
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if not (name.startswith("kserve/models/") and name.endswith(".py")):
                continue
            source = zf.read(name).decode()
            for cls, types, json_names in _class_dicts(ast.parse(source)):
                required = frozenset(_REQUIRED.findall(source))
                models[cls] = Model(cls, types, json_names, required)
    return models


def load_k8s_definitions(version: str) -> dict[str, Any]:
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{version}-local-strict"
    return json.loads((root / "_definitions.json").read_text())["$defs"]


class Deriver:
    def __init__(self, models: dict[str, Model], k8s: dict[str, Any]) -> None:
        self.models = models
        self.k8s = k8s
        self.defs: dict[str, Any] = {}
        self.missing: set[str] = set()

    def type_schema(self, type_name: str) -> dict[str, Any]:
        if type_name in _SCALARS:
            return dict(_SCALARS[type_name])
        if m := re.fullmatch(r"list\[(.+)\]", type_name):
            return {"type": "array", "items": self.type_schema(m.group(1))}
        if m := re.fullmatch(r"dict\(str, (.+)\)", type_name):
            return {"type": "object", "additionalProperties": self.type_schema(m.group(1))}
        if type_name in self.models:
            return self.model_ref(type_name)
        if re.fullmatch(r"V\d+(alpha|beta)\d+\w+", type_name):
            # a KServe type the SDK names but does not generate (0.21.0: V1alpha1WorkerSpec): left open
            self.missing.add(type_name)
            return {"type": "object", "$comment": f"{type_name}: not in the SDK, not checked"}
        return self.k8s_ref(type_name)

    def model_ref(self, name: str) -> dict[str, Any]:
        key = f"kserve.{name}"
        if key not in self.defs:
            self.defs[key] = {}  # placeholder: recursive types terminate
            self.defs[key] = self.object_schema(self.models[name])
        return {"$ref": f"#/$defs/{key}"}

    def object_schema(self, model: Model, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        properties = {
            model.json_names[field]: self.type_schema(t)
            for field, t in model.types.items()
            if field not in skip
        }
        schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        required = sorted(model.json_names[f] for f in model.required if f in model.types and f not in skip)
        if required:
            schema["required"] = required
        return schema

    def k8s_ref(self, sdk_name: str) -> dict[str, Any]:
        m = re.fullmatch(r"V1(\w+)", sdk_name)
        keys = [f"{group}.{m.group(1)}" for group in _K8S_GROUPS] if m else []
        keys += [_K8S_NAMES[sdk_name]] if sdk_name in _K8S_NAMES else []
        if sdk_name.startswith("K8sIo"):  # K8sIoApiAutoscalingV2Foo: io.k8s.api.autoscaling.v2.Foo
            flat = "iok8s" + sdk_name[len("K8sIo") :].lower()
            keys += [k for k in self.k8s if k.replace(".", "").lower() == flat]
        key = next((k for k in keys if k in self.k8s), None)
        if key is None:
            raise SystemExit(
                f"no Kubernetes {K8S_VERSION} definition for SDK type {sdk_name!r} (tried {keys})"
            )
        self._copy_k8s(key)
        return {"$ref": f"#/$defs/{key}"}

    def _copy_k8s(self, key: str) -> None:
        if key in self.defs:
            return
        schema = _strip(self.k8s[key])
        self.defs[key] = schema
        for ref in _refs(schema):
            self._copy_k8s(ref)

    def document(self, kind: str) -> dict[str, Any]:
        cls, api_version, _ = KINDS[kind]
        model = self.models[cls]
        top = self.object_schema(model, skip=("api_version", "kind", "status"))
        top["properties"] = {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            **top["properties"],
            "status": {"type": "object"},
        }
        top["required"] = sorted({"apiVersion", "kind", "metadata", "spec", *top.get("required", [])})
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$comment": (
                f"Generated by deploy/schemas/derive.py from the kserve {KSERVE_VERSION} SDK ({KSERVE_WHEEL}, "
                f"sha256 {KSERVE_WHEEL_SHA256}, kserve/models/); Kubernetes types from kubernetes-validate's "
                f"v{K8S_VERSION}-local-strict schemas. Do not edit by hand."
            ),
            "title": f"{kind} ({api_version})",
            **top,
            "$defs": dict(sorted(self.defs.items())),
        }


def _strip(node: Any) -> Any:
    """A copy without descriptions, with references pointing into this document."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "description" and isinstance(v, str):
                continue
            if k == "$ref" and isinstance(v, str) and v.startswith(_K8S_REF):
                out[k] = "#/$defs/" + v[len(_K8S_REF) :]
            else:
                out[k] = _strip(v)
        return out
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/"):
                yield v[len("#/$defs/") :]
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def fetch_wheel(dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        f"kserve=={KSERVE_VERSION}",
        "-d",
        str(dest),
    ]
    subprocess.run(cmd, check=True)
    return dest / KSERVE_WHEEL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wheel", type=Path, help=f"{KSERVE_WHEEL} (default: pip download it)")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the schemas (default: here)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != KSERVE_WHEEL_SHA256:
            raise SystemExit(f"{wheel}: sha256 {digest}, expected {KSERVE_WHEEL_SHA256}")
        models = load_models(wheel)
    k8s = load_k8s_definitions(K8S_VERSION)
    for kind, (_, _, filename) in KINDS.items():
        deriver = Deriver(models, k8s)
        schema = deriver.document(kind)
        for name in sorted(deriver.missing):
            print(f"{kind}: SDK type {name} is referenced but not generated; its field is left open")
        path = args.out / filename
        path.write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n")
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB, {len(schema['$defs'])} definitions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
