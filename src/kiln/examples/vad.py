"""A real stateful model: Silero VAD (the ONNX voice-activity model shipped in the ``silero-vad`` wheel), served with
implicit state so a client streams raw 16 kHz audio in 512-sample chunks under one sequence id and gets one
speech probability per chunk.

The model carries two pieces of state from chunk to chunk: its recurrent ``state`` (``[2, batch, 128]``) and the
last 64 samples of the previous chunk, which Silero's own wrapper prepends to each chunk. :func:`serving_model`
wraps the shipped graph so both become batch-first tensors the sequence batcher keeps (``state_in`` ->
``state_out``, ``context_in`` -> ``context_out``) and the sample rate a constant; :func:`reference` runs the shipped
model in process over a whole signal with the state threaded by hand, as the wrapper does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from kiln.errors import MissingDependencyError

MODEL = "silero_vad"
SAMPLE_RATE = 16000
CHUNK = 512  # samples per request at 16 kHz
CONTEXT = 64  # samples of the previous chunk the model sees again

CONFIG = f"""name: "{MODEL}"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [ {{ name: "audio" data_type: TYPE_FP32 dims: [ {CHUNK} ] }} ]
output [ {{ name: "probability" data_type: TYPE_FP32 dims: [ 1 ] }} ]
sequence_batching {{
  max_sequence_idle_microseconds: 5000000
  oldest {{ max_candidate_sequences: 64 max_queue_delay_microseconds: 2000 }}
  state [
    {{ input_name: "state_in" output_name: "state_out" data_type: TYPE_FP32 dims: [ 2, 128 ]
      initial_state: {{ data_type: TYPE_FP32 dims: [ 2, 128 ] zero_data: true name: "zeros" }} }},
    {{ input_name: "context_in" output_name: "context_out" data_type: TYPE_FP32 dims: [ {CONTEXT} ]
      initial_state: {{ data_type: TYPE_FP32 dims: [ {CONTEXT} ] zero_data: true name: "silence" }} }}
  ]
}}
"""


def available() -> bool:
    return importlib.util.find_spec("silero_vad") is not None


def shipped_model() -> Path:
    """The 16 kHz ONNX model inside the installed ``silero-vad`` wheel (not imported: it needs torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("silero-vad (which ships the model)", "examples")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad_16k_op15.onnx"
    if not path.is_file():
        raise FileNotFoundError(
            f"silero-vad is installed but has no {path.name}; reinstall silero-vad==6.2.3"
        )
    return path


def serving_model() -> onnx.ModelProto:
    """The shipped graph with batch-first state: inputs ``audio`` [b, 512], ``state_in`` [b, 2, 128],
    ``context_in`` [b, 64]; outputs ``probability`` [b, 1], ``state_out`` [b, 2, 128], ``context_out`` [b, 64]."""
    model = onnx.load(shipped_model())
    graph = model.graph
    del graph.input[:]
    graph.input.extend(
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", CHUNK]),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, ["batch", 2, 128]),
            helper.make_tensor_value_info("context_in", TensorProto.FLOAT, ["batch", CONTEXT]),
        ]
    )
    # what the shipped graph (its subgraphs included) reads as input, state and sr, made from the new inputs
    prologue = [
        helper.make_node("Concat", ["context_in", "audio"], ["input"], axis=1),
        helper.make_node("Transpose", ["state_in"], ["state"], perm=[1, 0, 2]),
        helper.make_node(
            "Constant", [], ["sr"], value=helper.make_tensor("sr_value", TensorProto.INT64, [], [SAMPLE_RATE])
        ),
    ]
    epilogue = [
        helper.make_node("Identity", ["output"], ["probability"]),
        helper.make_node("Transpose", ["stateN"], ["state_out"], perm=[1, 0, 2]),
        helper.make_node(
            "Constant",
            [],
            ["kiln_ctx_start"],
            value=helper.make_tensor("s", TensorProto.INT64, [1], [-CONTEXT]),
        ),
        helper.make_node(
            "Constant", [], ["kiln_ctx_end"], value=helper.make_tensor("e", TensorProto.INT64, [1], [2**62])
        ),
        helper.make_node(
            "Constant", [], ["kiln_ctx_axis"], value=helper.make_tensor("a", TensorProto.INT64, [1], [1])
        ),
        helper.make_node(
            "Slice", ["input", "kiln_ctx_start", "kiln_ctx_end", "kiln_ctx_axis"], ["context_out"]
        ),
    ]
    nodes = prologue + list(graph.node) + epilogue
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["batch", 2, 128]),
            helper.make_tensor_value_info("context_out", TensorProto.FLOAT, ["batch", CONTEXT]),
        ]
    )
    onnx.checker.check_model(model)
    return model


def write_vad(repo: Path) -> Path:
    """``repo/silero_vad``: the wrapped model and its sequence-batching config (oldest strategy, two states)."""
    model_dir = repo / MODEL
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(serving_model(), model_dir / "1" / "model.onnx")
    (model_dir / "config.pbtxt").write_text(CONFIG)
    return model_dir


def chunks(signal: np.ndarray) -> list[np.ndarray]:
    """A mono float32 signal in 512-sample chunks (the last one zero-padded)."""
    signal = np.asarray(signal, np.float32).reshape(-1)
    padded = np.concatenate([signal, np.zeros(-len(signal) % CHUNK, np.float32)])
    return [padded[i : i + CHUNK] for i in range(0, len(padded), CHUNK)]


def reference(signal: np.ndarray) -> np.ndarray:
    """Per-chunk speech probabilities from the shipped model run in process, state and context threaded by hand
    (what Silero's own wrapper does)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(shipped_model()), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, CONTEXT), np.float32)
    sr = np.array(SAMPLE_RATE, np.int64)
    out = []
    for chunk in chunks(signal):
        x = np.concatenate([context, chunk[np.newaxis]], axis=1)
        probability, state = session.run(None, {"input": x, "state": state, "sr": sr})
        context = x[:, -CONTEXT:]
        out.append(float(probability[0, 0]))
    return np.array(out, np.float32)


def synthetic_speech(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """A test signal without downloads: silence, then voiced 'syllables' (a gliding pitch with harmonics and
    formant-like weighting, 4 per second), then silence again, with a little noise throughout; 16 kHz float32."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k * (1.5 if 3 <= k <= 6 else 1.0) for k in range(1, 16))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5
    window = (t > seconds * 0.25) & (t < seconds * 0.8)
    signal = 0.3 * voice * syllables * window / 4 + 0.003 * rng.standard_normal(n)
    return signal.astype(np.float32)
