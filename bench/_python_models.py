"""The Python-backend models of bench/vs_triton_python.py: Triton-style model.py files, their configs, the
repositories, and a check of their outputs."""

from __future__ import annotations

import dataclasses
import json
import shutil
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from _common import ADD_SUB_DIMS, build_add_sub_repository

ADD_SUB, BLANK, ONNX, BLS = "add_sub", "blank", "add_sub_onnx", "bls_add_sub"
ADD_SUB_PROCESS = "add_sub_process"  # add_sub's model.py under Kiln's KILN_ISOLATION: process
PROCESS_ISOLATION = {"KILN_ISOLATION": "process"}
DIMS = 4

ADD_SUB_PY = """\
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.dtypes = [
            pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(config, name)["data_type"])
            for name in ("OUTPUT0", "OUTPUT1")
        ]

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            outputs = [
                pb_utils.Tensor("OUTPUT0", (a + b).astype(self.dtypes[0])),
                pb_utils.Tensor("OUTPUT1", (a - b).astype(self.dtypes[1])),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

    def finalize(self):
        pass
"""

BLANK_PY = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())]
            )
            for r in requests
        ]
"""

BLS_PY = f'''\
import triton_python_backend_utils as pb_utils

TARGET = "{ONNX}"


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            call = pb_utils.InferenceRequest(
                model_name=TARGET,
                requested_output_names=["OUTPUT0", "OUTPUT1"],
                inputs=[pb_utils.get_input_tensor_by_name(request, n) for n in ("INPUT0", "INPUT1")],
            )
            answer = call.exec()
            if answer.has_error():
                raise pb_utils.TritonModelException(answer.error().message())
            outputs = [pb_utils.get_output_tensor_by_name(answer, n) for n in ("OUTPUT0", "OUTPUT1")]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
'''


def python_config(
    name: str,
    inputs: Sequence[str],
    outputs: Sequence[str],
    dims: int,
    max_batch: int,
    parameters: Mapping[str, str] | None = None,
) -> str:
    """A Python-backend config.pbtxt: FP32 tensors of [dims], one CPU instance, string `parameters`."""

    def tensors(names: Sequence[str]) -> str:
        return ",\n".join(f'  {{ name: "{n}" data_type: TYPE_FP32 dims: [ {dims} ] }}' for n in names)

    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
        f"input [\n{tensors(inputs)}\n]\noutput [\n{tensors(outputs)}\n]\n"
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
        + "".join(
            f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
            for k, v in (parameters or {}).items()
        )
    )


def write_python_model(root: Path, name: str, source: str, config: str) -> None:
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    (root / name / "1" / "model.py").write_text(source)
    (root / name / "config.pbtxt").write_text(config)


@dataclasses.dataclass(frozen=True)
class Repositories:
    shared: Path  # add_sub + blank: served by both
    kiln_only: Path  # add_sub_onnx + bls_add_sub + add_sub_process
    cold: Path  # add_sub alone, for the cold starts and the memory
    cold_process: Path  # add_sub_process alone, likewise


def build_repositories(root: Path) -> Repositories:
    pair = ("INPUT0", "INPUT1"), ("OUTPUT0", "OUTPUT1")
    shared = root / "shared"
    write_python_model(shared, ADD_SUB, ADD_SUB_PY, python_config(ADD_SUB, *pair, DIMS, 0))
    write_python_model(shared, BLANK, BLANK_PY, python_config(BLANK, ["INPUT0"], ["OUTPUT0"], DIMS, 0))
    kiln_only = build_add_sub_repository(root / "kiln_only", ONNX)
    # same I/O as the ONNX model (batched FP32 [16]), so a request goes through unchanged
    write_python_model(kiln_only, BLS, BLS_PY, python_config(BLS, *pair, ADD_SUB_DIMS, 8))
    process_config = python_config(ADD_SUB_PROCESS, *pair, DIMS, 0, PROCESS_ISOLATION)
    write_python_model(kiln_only, ADD_SUB_PROCESS, ADD_SUB_PY, process_config)
    cold, cold_process = root / "cold", root / "cold_process"
    shutil.copytree(shared / ADD_SUB, cold / ADD_SUB)
    shutil.copytree(kiln_only / ADD_SUB_PROCESS, cold_process / ADD_SUB_PROCESS)
    return Repositories(shared, kiln_only, cold, cold_process)


# ------------------------------------------------------------------------------------- correctness


def infer_json(http_url: str, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    body = {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": list(a.shape), "data": a.ravel().tolist()}
            for n, a in inputs.items()
        ]
    }
    request = urllib.request.Request(
        f"http://{http_url}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.load(response)
    return {o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]) for o in answer["outputs"]}


def check_outputs(http_url: str, models: Sequence[str]) -> str:
    """One request per model, outputs compared with numpy; 'ok' or what differed."""
    rng = np.random.default_rng(0)
    problems = []
    for model in models:
        shape = (1, ADD_SUB_DIMS) if model in (ONNX, BLS) else (DIMS,)
        a, b = (rng.random(shape, dtype=np.float32) for _ in range(2))
        want = {"OUTPUT0": a} if model == BLANK else {"OUTPUT0": a + b, "OUTPUT1": a - b}
        try:
            got = infer_json(http_url, model, {"INPUT0": a} if model == BLANK else {"INPUT0": a, "INPUT1": b})
        except OSError as exc:
            problems.append(f"{model}: {exc}")
            continue
        for name, value in want.items():
            if name not in got or got[name].shape != value.shape or not np.allclose(got[name], value):
                problems.append(f"{model}: {name} differs ({got.get(name)!r})")
    return "ok" if not problems else "; ".join(problems)
