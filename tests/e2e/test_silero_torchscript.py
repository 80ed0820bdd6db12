"""Silero VAD's shipped TorchScript model (``silero_vad/data/silero_vad.jit`` in the ``silero-vad`` wheel) served by
a real ``kiln serve`` through the PyTorch backend, and compared with the shipped ONNX model run in process
(:func:`kiln.examples.vad.reference`) on speech-like audio made in the test.

The shipped module's forward is ``forward(self, x: Tensor, sr: int) -> Tensor`` and keeps the recurrent state and
the 64-sample context inside the module (``reset_states``). The backend passes only Tensors / ``List[str]`` to a
forward, so the file as shipped is refused at load with a message naming ``sr`` (asserted below). Two thin
TorchScript wrappers built here around the shipped module (its weights and code unchanged) are served instead:

- ``silero_fixed``: ``forward(x)`` calls the shipped forward with ``sr=16000``; the state stays inside the module,
  so the model is served with one instance and no batching, and only one stream at a time is meaningful;
- ``silero_seq``: ``forward(audio, state, context)`` calls the shipped inner 16 kHz network with the state passed
  explicitly, served with sequence batching and implicit state (``STATE_IN__1`` -> ``STATE_OUT__1``,
  ``CONTEXT_IN__2`` -> ``CONTEXT_OUT__2``), so concurrent streams stay apart.

Tolerance: both are float32 runs of the same network through different kernels (LibTorch vs ONNX Runtime), the
recurrent state carried over ~94 chunks; in process the two differ by ~1e-6. ``atol=1e-4`` leaves two orders of
magnitude for thread-count / kernel-choice differences while staying far below anything that could move a
speech decision (threshold 0.5).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
if importlib.util.find_spec("silero_vad") is None:
    pytest.skip("silero-vad (which ships silero_vad.jit) is not installed", allow_module_level=True)

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from kiln.examples import vad
from servers import KilnProcess

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")

ATOL = 1e-4

SHIPPED_CONFIG = """backend: "pytorch" max_batch_size: 0
instance_group [{ count: 1 kind: KIND_CPU }]
input [{ name: "x" data_type: TYPE_FP32 dims: [1, 512] }, { name: "sr" data_type: TYPE_INT64 dims: [1] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [1, 1] }]
"""

# one instance: the state lives inside the module, a second instance would hold a second, unrelated state
FIXED_CONFIG = """platform: "pytorch_libtorch" max_batch_size: 0
instance_group [{ count: 1 kind: KIND_CPU }]
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [1, 512] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [1, 1] }]
"""

SEQ_CONFIG = """platform: "pytorch_libtorch" max_batch_size: 8
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [512] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [1] }]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 8 max_queue_delay_microseconds: 2000 }
  state [
    { input_name: "STATE_IN__1" output_name: "STATE_OUT__1" data_type: TYPE_FP32 dims: [2, 128]
      initial_state: { data_type: TYPE_FP32 dims: [2, 128] zero_data: true name: "zeros" } },
    { input_name: "CONTEXT_IN__2" output_name: "CONTEXT_OUT__2" data_type: TYPE_FP32 dims: [64]
      initial_state: { data_type: TYPE_FP32 dims: [64] zero_data: true name: "silence" } }
  ]
}
"""


def shipped_jit() -> Path:
    return vad.shipped_model().parent / "silero_vad.jit"


def _wrappers() -> tuple[Any, Any]:
    import torch
    from torch import Tensor

    class FixedRate(torch.nn.Module):
        """The shipped module with its ``sr: int`` argument fixed at 16 kHz (state kept inside, as shipped)."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.vad = inner

        def forward(self, x: Tensor) -> Tensor:
            return self.vad(x, 16000)

    class ExplicitState(torch.nn.Module):
        """The shipped inner 16 kHz network with state and context as batch-first tensors in and out."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.model = inner._model

        def forward(self, audio: Tensor, state: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            x = torch.cat([context, audio], 1)
            out, new = self.model(x, state.transpose(0, 1).contiguous())
            return out, new.transpose(0, 1).contiguous(), x[:, -64:]

    return (
        torch.jit.script(FixedRate(torch.jit.load(str(shipped_jit())))),
        torch.jit.script(ExplicitState(torch.jit.load(str(shipped_jit())))),
    )


def _write(repo: Path, name: str, config: str, module: Any = None) -> None:
    import shutil

    import torch

    (repo / name / "1").mkdir(parents=True)
    if module is None:
        shutil.copyfile(shipped_jit(), repo / name / "1" / "model.pt")
    else:
        torch.jit.save(module, str(repo / name / "1" / "model.pt"))
    (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    repo = tmp_path_factory.mktemp("silero_torch")
    fixed, seq = _wrappers()
    _write(repo, "silero_shipped", SHIPPED_CONFIG)
    _write(repo, "silero_fixed", FIXED_CONFIG, fixed)
    _write(repo, "silero_seq", SEQ_CONFIG, seq)
    proc = KilnProcess([repo], log_dir=tmp_path_factory.mktemp("logs"))
    proc.start(timeout=120)
    yield proc
    assert proc.stop() == 0, proc.log()


def _speech(seed: int) -> tuple[np.ndarray, np.ndarray]:
    signal = vad.synthetic_speech(seconds=3.0, seed=seed)
    expected = vad.reference(signal)
    # the comparison is not between two flat lines: the ONNX model hears the voiced part and the silence
    assert expected.max() > 0.9 and expected[:10].max() < 0.5, expected
    return signal, expected


def test_the_shipped_jit_is_refused_at_load_naming_its_int_argument(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["silero_fixed"]["state"] == "READY" and index["silero_seq"]["state"] == "READY", index
    shipped = index["silero_shipped"]
    assert shipped["state"] != "READY"
    assert "'sr'" in shipped.get("reason", "") and "'int'" in shipped.get("reason", ""), shipped


def test_one_stream_through_the_module_kept_state_matches_onnx(server: KilnProcess) -> None:
    signal, expected = _speech(seed=0)
    client = httpclient.InferenceServerClient(server.http_url)
    got = []
    for chunk in vad.chunks(signal):
        x = httpclient.InferInput("INPUT__0", [1, vad.CHUNK], "FP32")
        x.set_data_from_numpy(chunk[np.newaxis])
        out = client.infer("silero_fixed", [x]).as_numpy("OUTPUT__0")
        assert out.shape == (1, 1)
        got.append(float(out[0, 0]))
    diff = float(np.abs(np.array(got, np.float32) - expected).max())
    print(f"silero_fixed vs ONNX: max |diff| = {diff:.3g} over {len(got)} chunks")
    assert diff < ATOL


def _stream(url: str, signal: np.ndarray, sequence_id: int) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    parts = vad.chunks(signal)
    got = []
    for i, chunk in enumerate(parts):
        x = grpcclient.InferInput("INPUT__0", [1, vad.CHUNK], "FP32")
        x.set_data_from_numpy(chunk[np.newaxis])
        result = client.infer(
            "silero_seq",
            [x],
            outputs=[grpcclient.InferRequestedOutput("OUTPUT__0")],
            sequence_id=sequence_id,
            sequence_start=i == 0,
            sequence_end=i == len(parts) - 1,
        )
        got.append(float(result.as_numpy("OUTPUT__0")[0, 0]))
    return np.array(got, np.float32)


def test_concurrent_streams_with_implicit_state_each_match_onnx(server: KilnProcess) -> None:
    streams = {101: _speech(seed=1), 102: _speech(seed=2), 103: (np.zeros(16000, np.float32), None)}
    silence = vad.reference(streams[103][0])
    with ThreadPoolExecutor(len(streams)) as pool:
        futures = {sid: pool.submit(_stream, server.grpc_url, s, sid) for sid, (s, _) in streams.items()}
        results = {sid: f.result() for sid, f in futures.items()}
    for sid, (_, expected) in streams.items():
        want = silence if expected is None else expected
        diff = float(np.abs(results[sid] - want).max())
        print(f"silero_seq stream {sid} vs ONNX: max |diff| = {diff:.3g} over {len(want)} chunks")
        assert diff < ATOL, sid
