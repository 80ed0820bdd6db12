"""The model repositories of bench/ensembles.py.

Part A: ``add_sub`` (ONNX, FP32 [4], ``max_batch_size: 8``, no batcher) and ensembles ``chain_<K>`` of K add_sub
steps, each step's OUTPUT0 feeding the next step's INPUT0 and the ensemble's ``Y`` every step's INPUT1, so
``OUT = X + K * Y``.

Part B: the classification task (kiln.vision.zoo: ``efficientnet_lite0``, ``classification_preprocess`` and the
``classify_image`` ensemble over them) plus ``classify_image_bls``, a Python model with the ensemble's config that
runs the same two steps through BLS (``pb_utils.InferenceRequest(...).exec()``), and classify_image_bls_8: the
same model with ``instance_group [ { count: 8 } ]`` (an ensemble has no instances of its own; a BLS model with one
instance runs one request at a time through both steps, so its steps never overlap and the classifier never batches).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

ADD_SUB = "add_sub"
ADD_SUB_DIMS = 4
ADD_SUB_MAX_BATCH = 8
BLS_PIPELINE = "classify_image_bls"
BLS_WIDE = (
    "classify_image_bls_8"  # the same model.py with 8 instances: up to 8 requests through the steps at once
)
BLS_WIDE_INSTANCES = 8
PREPROCESS = "classification_preprocess"

ADD_SUB_CONFIG = f"""name: "{ADD_SUB}"
backend: "onnxruntime"
max_batch_size: {ADD_SUB_MAX_BATCH}
input [
  {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {ADD_SUB_DIMS} ] }},
  {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ {ADD_SUB_DIMS} ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {ADD_SUB_DIMS} ] }},
  {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ {ADD_SUB_DIMS} ] }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def chain_name(steps: int) -> str:
    return f"chain_{steps}"


def chain_config(steps: int) -> str:
    """An ensemble of `steps` add_sub steps: s_0 = X + Y, s_i = s_{i-1} + Y, OUT = s_{K-1}."""
    if steps < 1:
        raise ValueError("a chain needs at least one step")
    blocks = []
    for i in range(steps):
        source = "X" if i == 0 else f"s{i - 1}"
        target = "OUT" if i == steps - 1 else f"s{i}"
        blocks.append(
            f'    {{ model_name: "{ADD_SUB}" model_version: -1\n'
            f'      input_map {{ key: "INPUT0" value: "{source}" }}\n'
            f'      input_map {{ key: "INPUT1" value: "Y" }}\n'
            f'      output_map {{ key: "OUTPUT0" value: "{target}" }} }}'
        )
    tensor = f"data_type: TYPE_FP32 dims: [ {ADD_SUB_DIMS} ]"
    return (
        f'name: "{chain_name(steps)}"\nplatform: "ensemble"\nmax_batch_size: {ADD_SUB_MAX_BATCH}\n'
        f'input [ {{ name: "X" {tensor} }}, {{ name: "Y" {tensor} }} ]\n'
        f'output [ {{ name: "OUT" {tensor} }} ]\n'
        "ensemble_scheduling {\n  step [\n" + ",\n".join(blocks) + "\n  ]\n}\n"
    )


def build_chain_repository(root: Path, lengths: Sequence[int]) -> Path:
    """`root` with add_sub and one chain_<K> ensemble per K in `lengths`."""
    from kiln.examples import models, write_model

    root.mkdir(parents=True, exist_ok=True)
    write_model(root, ADD_SUB, models.add_sub(["batch", ADD_SUB_DIMS]), ADD_SUB_CONFIG)
    for k in lengths:
        folder = root / chain_name(k)
        (folder / "1").mkdir(parents=True, exist_ok=True)  # an ensemble's version folder stays empty
        (folder / "config.pbtxt").write_text(chain_config(k))
    return root


BLS_MODEL_PY = """\
# classify_image as BLS: the classify_image ensemble's two steps, called from Python

import triton_python_backend_utils as pb_utils

PREPROCESS = "__PREPROCESS__"
CLASSIFIER = "__CLASSIFIER__"


def _call(model, inputs, output):
    response = pb_utils.InferenceRequest(
        model_name=model, requested_output_names=[output], inputs=inputs
    ).exec()
    if response.has_error():
        raise pb_utils.TritonModelException(model + ": " + response.error().message())
    return pb_utils.get_output_tensor_by_name(response, output)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, "IMAGE")
            try:
                preprocessed = _call(PREPROCESS, [image], "input")
                probabilities = _call(CLASSIFIER, [preprocessed], "probabilities")
            except pb_utils.TritonModelException as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
                continue
            responses.append(pb_utils.InferenceResponse([probabilities]))
        return responses
"""

BLS_CONFIG = f"""name: "{BLS_PIPELINE}"
backend: "python"
max_batch_size: 8
input [ {{ name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "probabilities" data_type: TYPE_FP32 dims: [ 1000 ] label_filename: "labels.txt" }} ]
"""


def build_classification_repository(root: Path) -> Path:
    """`root` with efficientnet_lite0 (exported with torch here, a few seconds), classification_preprocess,
    the classify_image ensemble, classify_image_bls (same config as the ensemble, same labels) and
    classify_image_bls_8 (the same with 8 instances)."""
    from kiln.vision import zoo

    root.mkdir(parents=True, exist_ok=True)
    zoo.write_classifier(root)
    ensemble = zoo.write_classification_pipeline(root)
    folder = root / BLS_PIPELINE
    (folder / "1").mkdir(parents=True, exist_ok=True)
    source = BLS_MODEL_PY.replace("__PREPROCESS__", PREPROCESS).replace("__CLASSIFIER__", zoo.CLASSIFIER)
    (folder / "1" / "model.py").write_text(source)
    (folder / "config.pbtxt").write_text(BLS_CONFIG)
    shutil.copyfile(ensemble / "labels.txt", folder / "labels.txt")
    wide = root / BLS_WIDE
    shutil.copytree(folder, wide)
    config = BLS_CONFIG.replace(f'name: "{BLS_PIPELINE}"', f'name: "{BLS_WIDE}"', 1)
    (wide / "config.pbtxt").write_text(
        config + f"instance_group [ {{ count: {BLS_WIDE_INSTANCES} kind: KIND_CPU }} ]\n"
    )
    return root
