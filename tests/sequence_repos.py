"""Sequence test repositories: models of our own with the inputs, outputs and control tensors of Triton's
quick-start ``simple_sequence`` / ``simple_dyna_sequence``, and implicit-state accumulators."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kiln.examples import models, vad, write_model

SIMPLE_SEQUENCE = """name: "simple_sequence"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] }
  ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""

SIMPLE_DYNA_SEQUENCE = """name: "simple_dyna_sequence"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 10000000
  oldest { max_candidate_sequences: 1024 max_queue_delay_microseconds: 10000 }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""

ACCUMULATOR = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {{
  max_sequence_idle_microseconds: {idle}
  {strategy}
  state [ {{
    input_name: "ACC_IN" output_name: "ACC_OUT" data_type: TYPE_FP32 dims: [ 1 ]
    {initial}
  }} ]
}}
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] }} ]
"""

# echoes what a Python model sees of its sequence: correlation_id() and flags()
SEQUENCE_ECHO = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            corr = request.correlation_id()
            info = f"{corr!r} {request.flags()}".encode()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT", x),
                pb_utils.Tensor("INFO", np.array([[info]], dtype=np.object_)),
            ]))
        return responses
"""


def build_sequence_repository(repo: Path) -> Path:
    """The quick-start-like sequence models, accumulators with implicit state, a Python model that echoes its
    sequence, and (where ``silero-vad`` is installed, as ``make setup`` does) the Silero VAD model."""
    repo.mkdir(parents=True, exist_ok=True)
    if vad.available():
        vad.write_vad(repo)
    write_model(repo, "simple_sequence", models.sequence_controls(), SIMPLE_SEQUENCE)
    write_model(repo, "simple_dyna_sequence", models.sequence_controls(dyna=True), SIMPLE_DYNA_SEQUENCE)
    zero = 'initial_state: { data_type: TYPE_FP32 dims: [ 1 ] zero_data: true name: "zeros" }'
    from_file = 'initial_state: { data_type: TYPE_FP32 dims: [ 1 ] data_file: "hundred" name: "hundred" }'
    oldest = "oldest { max_candidate_sequences: 16 max_queue_delay_microseconds: 300000 }"
    for name, strategy, initial, idle in (
        ("accumulator", "direct { }", zero, 1000000),
        ("accumulator_oldest", oldest, zero, 1000000),
        ("accumulator_from_file", "direct { }", from_file, 1000000),
        ("accumulator_short_idle", "direct { }", zero, 300000),
    ):
        config = ACCUMULATOR.format(name=name, strategy=strategy, initial=initial, idle=idle)
        folder = write_model(repo, name, models.accumulator(), config)
        if "data_file" in initial:
            (folder / "initial_state").mkdir()
            (folder / "initial_state" / "hundred").write_bytes(np.array([100], np.float32).tobytes())
    echo = repo / "sequence_echo"
    (echo / "1").mkdir(parents=True)
    (echo / "1" / "model.py").write_text(SEQUENCE_ECHO)
    (echo / "config.pbtxt").write_text(
        'name: "sequence_echo"\nbackend: "python"\nmax_batch_size: 8\nsequence_batching { }\n'
        'input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }, '
        '{ name: "INFO" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
    )
    return repo
