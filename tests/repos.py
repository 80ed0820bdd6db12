"""Test model repositories, built from tiny ONNX models (kiln.examples.models + a few of their own)."""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto

from kiln.examples import build_example_repository, models, write_model

# KServe datatype -> ONNX element type, for an identity model per datatype
DTYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


# add_sub [batch, 4] models with scheduler settings (long delays make batching deterministic in tests)
SCHEDULER_MODELS = {
    # concurrent requests within 300 ms merge into one execution
    "batched": "dynamic_batching { max_queue_delay_microseconds: 300000 }",
    # one request waits 2 s for company; a second one finds the queue full
    "queue_of_one": "dynamic_batching { max_queue_delay_microseconds: 2000000 "
    "default_queue_policy { max_queue_size: 1 } }",
    # requests wait up to 2 s for company but time out after 100 ms (or the request's own timeout)
    "queue_timeout": "dynamic_batching { max_queue_delay_microseconds: 2000000 "
    "default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 100000 "
    "allow_timeout_override: true } }",
    # requests wait 1.5 s: long enough to cancel them or to send SIGTERM while they wait
    "slow_queue": "dynamic_batching { max_queue_delay_microseconds: 1500000 }",
    "prioritised": "dynamic_batching { priority_levels: 2 default_priority_level: 2 }",
    "two_instances": "instance_group [ { count: 2 kind: KIND_CPU } ]",
    "gpu_only": "instance_group [ { count: 1 kind: KIND_GPU } ]",
}


def build_test_repository(repo: Path) -> Path:
    """The example models plus: identity_<dtype> (no config: auto-completed, max_batch_size 4, dims [-1]),
    a non-batching model, a reshape model and a model with three versions."""
    build_example_repository(repo)
    for name, elem in DTYPES.items():
        write_model(repo, f"identity_{name.lower()}", models.identity(elem, ["batch", "n"]), None)
    write_model(
        repo,
        "nobatch",
        models.add_sub([2, 3]),
        'name: "nobatch"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n',
    )
    write_model(
        repo,
        "reshaped",
        models.identity(TensorProto.FLOAT, ["batch", 2, 3]),
        """name: "reshaped"
backend: "onnxruntime"
max_batch_size: 2
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 6 ] reshape: { shape: [ 2, 3 ] } } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 6 ] reshape: { shape: [ 2, 3 ] } } ]
""",
    )
    versions_config = 'name: "versioned"\nversion_policy: { all: {} }\n'
    for v in (1, 2, 3):
        # version v adds v: OUTPUT0 = INPUT0 + INPUT1 where the test sends INPUT1 = v
        write_model(repo, "versioned", models.add_sub(["batch", 4]), versions_config, version=v)
    for name, config in SCHEDULER_MODELS.items():
        write_model(repo, name, models.add_sub(["batch", 4]), f'name: "{name}"\nmax_batch_size: 8\n{config}')
    write_model(repo, "latest_only", models.add_sub(["batch", 4]), None, version=1)
    write_model(repo, "latest_only", models.add_sub(["batch", 4]), None, version=7)
    return repo


def build_broken_repository(repo: Path) -> Path:
    """Models that must fail to load, each for a different reason, without stopping the server."""
    repo.mkdir(parents=True, exist_ok=True)
    garbage = repo / "garbage_file" / "1"
    garbage.mkdir(parents=True)
    (garbage / "model.onnx").write_bytes(b"this is not an onnx model")
    (repo / "garbage_file" / "config.pbtxt").write_text('backend: "onnxruntime"\n')
    write_model(
        repo, "bad_config_syntax", models.add_sub([4]), 'name: "bad_config_syntax"\nmax_batch_size: [\n'
    )
    write_model(repo, "unknown_field", models.add_sub([4]), 'backend: "onnxruntime"\nno_such_field: 3\n')
    write_model(
        repo,
        "dtype_mismatch",
        models.add_sub([4]),
        'backend: "onnxruntime"\ninput [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 4 ] },'
        ' { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n',
    )
    write_model(
        repo,
        "rank_mismatch",
        models.add_sub([4]),
        'backend: "onnxruntime"\ninput [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 2, 2 ] },'
        ' { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n',
    )
    write_model(repo, "unsupported_backend", models.add_sub([4]), 'backend: "tensorrt"\n')
    return repo


DECOUPLED_CONFIG = """backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [{ name: "N" data_type: TYPE_INT32 dims: [1] }]
output [{ name: "OUT" data_type: TYPE_INT32 dims: [1] }]
"""


def write_python_model(repo: Path, name: str, code: str, config: str = DECOUPLED_CONFIG) -> Path:
    """``repo/name/1/model.py`` with ``code`` and its ``config.pbtxt`` (default: decoupled, INT32 N -> OUT)."""
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.py").write_text(code)
    (repo / name / "config.pbtxt").write_text(config)
    return repo / name
