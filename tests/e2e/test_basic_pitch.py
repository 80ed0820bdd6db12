"""One real model in three formats: Spotify's basic-pitch (``basic-pitch==0.4.0``, installed ``--no-deps``) ships
its ICASSP 2022 note/onset/contour model as a TF SavedModel, ``nmp.tflite`` and ``nmp.onnx``. All three are served
side by side by one real ``kiln serve`` with auto-completed configs, and the same synthetic audio frames sent to
each over HTTP and gRPC must give the same outputs (within tolerance) through TensorFlow, TFLite and ONNX Runtime.

The wheel is located with ``importlib.util.find_spec`` (importing ``basic_pitch`` would import TensorFlow and
warn about its missing optional dependencies); nothing is downloaded."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from servers import KilnProcess, wait_until

SAMPLE_RATE = 22050  # basic_pitch.constants.AUDIO_SAMPLE_RATE
N_SAMPLES = 43844  # AUDIO_N_SAMPLES = 22050 * 2 - 256: one window, the models' fixed input length
N_FRAMES = 172  # output frames per window
MIDI_OFFSET = 21  # note/onset bin 0 is MIDI 21 (A0)
MODELS = ("bp_savedmodel", "bp_tflite", "bp_onnx")
MODULES = [httpclient, grpcclient]

# Triton names per format: the SavedModel's and the TFLite model's signature keys; the ONNX export keeps the TF
# tensor names, mapped as basic_pitch/inference.py maps them (note = :1, onset = :2, contour = :0).
INPUT_NAME = {"bp_savedmodel": "input_2", "bp_tflite": "input_2", "bp_onnx": "serving_default_input_2:0"}
OUTPUT_NAMES = {
    "bp_savedmodel": {"note": "note", "onset": "onset", "contour": "contour"},
    "bp_tflite": {"note": "note", "onset": "onset", "contour": "contour"},
    "bp_onnx": {
        "note": "StatefulPartitionedCall:1",
        "onset": "StatefulPartitionedCall:2",
        "contour": "StatefulPartitionedCall:0",
    },
}
OUTPUT_SHAPES = {"note": (N_FRAMES, 88), "onset": (N_FRAMES, 88), "contour": (N_FRAMES, 264)}

# The outputs are sigmoid posteriorgrams in [0, 1]. The three files are conversions of one FP32 graph: TF runs it
# as saved, ONNX Runtime after tf2onnx and its own fusions, TFLite after the converter's op rewrites and XNNPACK
# kernels, so the three differ only by FP32 rounding accumulated through the CQT front end and ~10 conv layers.
# Measured (x86-64, AVX2; printed by the test with -s): TFLite and ONNX vs the SavedModel, max |difference| over
# all outputs and frames 1e-4 (onset 9.9e-5, contour 8.0e-5, note 3.9e-5); TFLite vs ONNX 9e-7. 1e-3 absolute is
# ten times the worst measured difference and still 500 times finer than the 0.5 threshold basic-pitch's note
# decoding applies, so a real divergence (a wrong output mapping, a transposed or mis-batched frame, another
# model) fails it by far.
ATOL = 1e-3


def _saved_models_dir() -> Path:
    spec = importlib.util.find_spec("basic_pitch")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("basic-pitch is not installed (pip install --no-deps basic-pitch==0.4.0)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "saved_models" / "icassp_2022"
    if not (folder / "nmp" / "saved_model.pb").exists():
        pytest.skip(f"basic-pitch's models are not under {folder}")
    return folder


def synthetic_audio(batch: int = 2) -> np.ndarray:
    """``batch`` windows of [N_SAMPLES, 1] FP32 audio at 22.05 kHz: held notes with harmonics and an attack
    envelope (A4 = MIDI 69 then C5 = MIDI 72 in window 0, E4 = MIDI 64 in window 1) over faint noise."""
    t = np.arange(N_SAMPLES) / SAMPLE_RATE
    rng = np.random.default_rng(0)

    def note(midi: int, start: float, stop: float) -> np.ndarray:
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in (1, 2, 3))
        envelope = np.where((t >= start) & (t < stop), np.exp(-1.5 * np.clip(t - start, 0, None)), 0.0)
        return tone * envelope

    windows = [note(69, 0.1, 0.9) + note(72, 1.0, 1.9), note(64, 0.2, 1.8)][:batch]
    audio = np.stack([0.3 * w + 0.003 * rng.standard_normal(N_SAMPLES) for w in windows])
    return audio.astype(np.float32)[..., None]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    source = _saved_models_dir()
    repo = tmp_path_factory.mktemp("basic_pitch_repo")
    shutil.copytree(source / "nmp", repo / "bp_savedmodel" / "1" / "model.savedmodel")
    for name, filename in (("bp_tflite", "model.tflite"), ("bp_onnx", "model.onnx")):
        (repo / name / "1").mkdir(parents=True)
        shutil.copyfile(source / f"nmp.{filename.split('.')[1]}", repo / name / "1" / filename)
    # no config.pbtxt anywhere: every config is auto-completed from the model file
    proc = KilnProcess([repo], log_dir=tmp_path_factory.mktemp("logs"))
    proc.start(timeout=120)
    c = httpclient.InferenceServerClient(proc.http_url)
    wait_until(lambda: all(c.is_model_ready(m) for m in MODELS), timeout=60, what="the three models ready")
    yield proc
    assert proc.stop() == 0, proc.log()


def client(server: KilnProcess, module: Any) -> Any:
    return module.InferenceServerClient(server.http_url if module is httpclient else server.grpc_url)


def infer(server: KilnProcess, module: Any, model: str, audio: np.ndarray) -> dict[str, np.ndarray]:
    tensor = module.InferInput(INPUT_NAME[model], list(audio.shape), "FP32")
    tensor.set_data_from_numpy(audio)
    names = OUTPUT_NAMES[model]
    outputs = [module.InferRequestedOutput(n) for n in names.values()]
    result = client(server, module).infer(model, [tensor], outputs=outputs)
    return {key: result.as_numpy(name) for key, name in names.items()}


def test_configs_are_auto_completed_from_each_format(server: KilnProcess) -> None:
    c = httpclient.InferenceServerClient(server.http_url)
    for model in MODELS:
        config = c.get_model_config(model)
        assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
            (INPUT_NAME[model], "TYPE_FP32", [N_SAMPLES, 1])
        ]
        dims = {o["name"]: tuple(o["dims"]) for o in config["output"]}
        assert dims == {OUTPUT_NAMES[model][k]: OUTPUT_SHAPES[k] for k in OUTPUT_SHAPES}
        assert config["max_batch_size"] > 0  # the batch dimension is dynamic in all three files
    platforms = {m: c.get_model_metadata(m)["platform"] for m in MODELS}
    assert platforms["bp_savedmodel"] == "tensorflow_savedmodel"
    assert platforms["bp_onnx"] == "onnxruntime_onnx"


@pytest.mark.parametrize("module", MODULES)
def test_three_formats_agree_on_the_same_audio(server: KilnProcess, module: Any) -> None:
    audio = synthetic_audio(2)
    results = {model: infer(server, module, model, audio) for model in MODELS}
    for model, outputs in results.items():
        for key, value in outputs.items():
            assert value.shape == (2, *OUTPUT_SHAPES[key]), (model, key)
            assert value.dtype == np.float32
            assert np.isfinite(value).all() and value.min() >= 0.0 and value.max() <= 1.0, (model, key)
    report = []
    reference = results["bp_savedmodel"]
    for model in ("bp_tflite", "bp_onnx"):
        for key in OUTPUT_SHAPES:
            diff = float(np.abs(results[model][key] - reference[key]).max())
            report.append(f"{model} vs bp_savedmodel {key}: max |diff| {diff:.2e}")
            np.testing.assert_allclose(results[model][key], reference[key], atol=ATOL, rtol=0, err_msg=model)
    diff = max(float(np.abs(results["bp_tflite"][k] - results["bp_onnx"][k]).max()) for k in OUTPUT_SHAPES)
    report.append(f"bp_tflite vs bp_onnx, all outputs: max |diff| {diff:.2e}")
    print(f"\n[{module.__name__}] " + "\n".join(report))

    # the model hears the notes: the strongest pitch bin over each note's frames is that note (in every format)
    frames_per_second = N_FRAMES / (N_SAMPLES / SAMPLE_RATE)
    for model, outputs in results.items():
        for window, midi, start, stop in ((0, 69, 0.2, 0.8), (0, 72, 1.1, 1.8), (1, 64, 0.3, 1.6)):
            span = outputs["note"][window, int(start * frames_per_second) : int(stop * frames_per_second)]
            assert int(span.mean(axis=0).argmax()) + MIDI_OFFSET == midi, (model, window, midi)


def test_a_batch_is_the_windows_one_by_one(server: KilnProcess) -> None:
    """Batch 2 equals the two windows sent alone, per format (frames are not mixed across the batch)."""
    audio = synthetic_audio(2)
    for model in MODELS:
        both = infer(server, grpcclient, model, audio)
        for i in range(2):
            alone = infer(server, grpcclient, model, audio[i : i + 1])
            for key in OUTPUT_SHAPES:
                np.testing.assert_allclose(alone[key][0], both[key][i], atol=1e-5, rtol=0, err_msg=model)
