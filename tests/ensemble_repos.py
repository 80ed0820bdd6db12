"""Ensemble test repositories: add_sub steps (ONNX) and Python steps wired into pipelines."""

from __future__ import annotations

from pathlib import Path

from kiln.examples import models, write_model

ADD_SUB = """name: "{name}"
backend: "onnxruntime"
max_batch_size: {mbs}
input [
  {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }}
]
{extra}
"""

# two add_sub steps: (a, b) -> (a+b, a-b) -> (2a, 2b)
CHAIN = """name: "{name}"
platform: "ensemble"
max_batch_size: {mbs}
input [
  {{ name: "A" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "B" data_type: TYPE_FP32 dims: [ 4 ] }}
]
output [
  {{ name: "TWICE_A" data_type: TYPE_FP32 dims: [ 4 ] }},
  {{ name: "TWICE_B" data_type: TYPE_FP32 dims: [ 4 ] }}
]
ensemble_scheduling {{
  step [
    {{
      model_name: "{second}"
      model_version: -1
      input_map {{ key: "INPUT0" value: "sum" }}
      input_map {{ key: "INPUT1" value: "diff" }}
      output_map {{ key: "OUTPUT0" value: "TWICE_A" }}
      output_map {{ key: "OUTPUT1" value: "TWICE_B" }}
    }},
    {{
      model_name: "{first}"
      model_version: -1
      input_map {{ key: "INPUT0" value: "A" }}
      input_map {{ key: "INPUT1" value: "B" }}
      output_map {{ key: "OUTPUT0" value: "sum" }}
      output_map {{ key: "OUTPUT1" value: "diff" }}
    }}
  ]
}}
"""


def write_add_sub(repo: Path, name: str, mbs: int = 8, extra: str = "") -> Path:
    dims: list[int | str] = ["batch", 4] if mbs else [4]
    return write_model(repo, name, models.add_sub(dims), ADD_SUB.format(name=name, mbs=mbs, extra=extra))


def write_ensemble(repo: Path, name: str, config: str) -> Path:
    """An ensemble's folder: its config and the (empty) version folder Triton requires."""
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config)
    return folder


def write_python(repo: Path, name: str, source: str, config: str) -> Path:
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.py").write_text(source)
    (folder / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\n{config}')
    return folder


# sleeps, then answers OUT = IN and when it ran (STAMP = [start, end], time.time())
STAMP = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            start = time.time()
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            time.sleep(float(request.parameters() and __import__("json").loads(request.parameters()).get("sleep", 0.3)))
            stamp = np.array([[start, time.time()]] * len(x), np.float64)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x), pb_utils.Tensor("STAMP", stamp)]))
        return responses
"""
STAMP_CONFIG = """max_batch_size: 8
instance_group [ { count: 2 kind: KIND_CPU } ]
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "STAMP" data_type: TYPE_FP64 dims: [ 2 ] } ]
"""

# OUT = IN * 2, refusing negative input; INFO echoes what the step request carried
CHECKED_DOUBLE = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if (x < 0).any():
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("negative input")))
                continue
            info = json.dumps({"id": request.request_id(), "correlation_id": request.correlation_id(),
                               "parameters": json.loads(request.parameters())})
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", x * 2),
                pb_utils.Tensor("INFO", np.array([[info.encode()]] * len(x), dtype=np.object_)),
            ]))
        return responses
"""
CHECKED_DOUBLE_CONFIG = """max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "INFO" data_type: TYPE_STRING dims: [ 1 ] } ]
"""

# decoupled: N responses OUT = [i, i, i, i] for i < N
REPEAT = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy().reshape(-1)[0])
            for i in range(n):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.full((1, 4), i, np.float32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""
REPEAT_CONFIG = """max_batch_size: 1
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
model_transaction_policy { decoupled: true }
"""


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: -1{maps} }}'


def ensemble_config(name: str, mbs: int, inputs: str, outputs: str, steps: list[str]) -> str:
    return (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {mbs}\ninput [ {inputs} ]\n'
        f"output [ {outputs} ]\nensemble_scheduling {{ step [ {', '.join(steps)} ] }}\n"
    )


def _fp32(*names: str, dims: str = "4") -> str:
    return ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ {dims} ] }}' for n in names)


def build_ensemble_repository(repo: Path) -> Path:
    """add_sub steps (batching, non-batching, batching with a 300 ms queue delay), Python steps, and the
    ensembles over them: chain, mixed, parallel, python_then_onnx, slow_then_onnx, fan_out, bad ones."""
    repo.mkdir(parents=True, exist_ok=True)
    write_add_sub(repo, "add_sub")
    write_add_sub(repo, "add_sub_nobatch", mbs=0)
    write_add_sub(repo, "add_sub_batched", extra="dynamic_batching { max_queue_delay_microseconds: 300000 }")
    write_ensemble(repo, "chain", CHAIN.format(name="chain", mbs=8, first="add_sub", second="add_sub"))
    # steps listed out of order, a non-batching step inside a batching ensemble
    write_ensemble(
        repo, "mixed", CHAIN.format(name="mixed", mbs=4, first="add_sub", second="add_sub_nobatch")
    )
    write_ensemble(
        repo, "batching", CHAIN.format(name="batching", mbs=8, first="add_sub_batched", second="add_sub")
    )
    write_python(repo, "stamp", STAMP, STAMP_CONFIG)
    write_python(repo, "checked_double", CHECKED_DOUBLE, CHECKED_DOUBLE_CONFIG)
    write_python(repo, "repeat", REPEAT, REPEAT_CONFIG)
    # two sleeping steps that only depend on the input run side by side; a third joins them
    write_ensemble(
        repo,
        "parallel",
        ensemble_config(
            "parallel", 8, _fp32("X"),
            _fp32("SUM") + ', { name: "STAMP1" data_type: TYPE_FP64 dims: [ 2 ] }, '
            '{ name: "STAMP2" data_type: TYPE_FP64 dims: [ 2 ] }',
            [
                _step("stamp", {"IN": "X"}, {"OUT": "x1", "STAMP": "STAMP1"}),
                _step("stamp", {"IN": "X"}, {"OUT": "x2", "STAMP": "STAMP2"}),
                _step("add_sub", {"INPUT0": "x1", "INPUT1": "x2"}, {"OUTPUT0": "SUM"}),
            ],
        ),
    )  # fmt: skip
    # a Python step then an ONNX one: (2x + y, 2x - y); INFO shows what the Python step's request carried
    write_ensemble(
        repo,
        "python_then_onnx",
        ensemble_config(
            "python_then_onnx", 8, _fp32("X", "Y"),
            _fp32("SUM", "DIFF") + ', { name: "INFO" data_type: TYPE_STRING dims: [ 1 ] }',
            [
                _step("checked_double", {"IN": "X"}, {"OUT": "doubled", "INFO": "INFO"}),
                _step("add_sub", {"INPUT0": "doubled", "INPUT1": "Y"}, {"OUTPUT0": "SUM", "OUTPUT1": "DIFF"}),
            ],
        ),
    )  # fmt: skip
    # a slow Python step before an ONNX one: time to cancel the request in between
    write_ensemble(
        repo,
        "slow_then_onnx",
        ensemble_config(
            "slow_then_onnx", 8, _fp32("X"), _fp32("SUM"),
            [
                _step("stamp", {"IN": "X"}, {"OUT": "x1"}),
                _step("add_sub_nobatch", {"INPUT0": "x1", "INPUT1": "x1"}, {"OUTPUT0": "SUM"}),
            ],
        ),
    )  # fmt: skip
    # a decoupled step: N responses, each continued through add_sub; the ensemble is decoupled
    write_ensemble(
        repo,
        "fan_out",
        ensemble_config(
            "fan_out", 1, '{ name: "N" data_type: TYPE_INT32 dims: [ 1 ] }, ' + _fp32("Y"), _fp32("SUM"),
            [
                _step("repeat", {"N": "N"}, {"OUT": "i"}),
                _step("add_sub", {"INPUT0": "i", "INPUT1": "Y"}, {"OUTPUT0": "SUM"}),
            ],
        ),
    )  # fmt: skip
    # refused at load: a step input mapped from nothing
    write_ensemble(
        repo,
        "bad_unmapped",
        ensemble_config(
            "bad_unmapped", 8, _fp32("X"), _fp32("SUM"),
            [_step("add_sub", {"INPUT0": "X", "INPUT1": "nowhere"}, {"OUTPUT0": "SUM"})],
        ),
    )  # fmt: skip
    return repo
