"""The honest gate (confidence intervals, minimum samples, a red "failed" line), pre-processing that is never
guessed, and building into an existing model folder (the user's config kept, changes listed, --labels)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from build_models import conv_net, save, write_samples
from kiln.builder import AccuracyGateError, BuildOptions, CalibrationOptions, Precision, Preprocessing, build
from kiln.builder.report import Reporter
from kiln.builder.stats import paired_drop_ci, wilson
from kiln.config import load_config
from kiln.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gate")
    save(conv_net(), root, "conv.onnx")
    write_samples(root / "cal", "x", (3, 16, 16), 40)
    write_samples(root / "val", "x", (3, 16, 16), 120, seed=4)
    return root


def _options(work: Path, out: str, **kw: object) -> BuildOptions:
    return BuildOptions(
        source=work / "conv.onnx", output=work / "repo" / out, benchmark=False, progress=False,
        calibration=kw.pop("calibration", CalibrationOptions(data=work / "cal")),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_wilson_and_paired_bootstrap_intervals() -> None:
    low, high = wilson(95, 100)
    assert low == pytest.approx(0.8882, abs=1e-3) and high == pytest.approx(0.9785, abs=1e-3)
    assert wilson(100, 100)[1] == 1.0 and wilson(100, 100)[0] == pytest.approx(0.9630, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)
    ref = np.ones(1000, bool)
    cand = ref.copy()
    cand[:20] = False  # the artifact gets 20 more wrong: a 2-point drop
    lo, hi = paired_drop_ci(ref, cand)
    assert 0.9 < lo < 2.0 < hi < 3.1
    assert paired_drop_ci(ref, ref) == (0.0, 0.0)


def test_too_few_samples_refuse_to_pass_unless_allowed(work: Path) -> None:
    options = _options(work, "few", precision=Precision.INT8)  # 40 samples: 8 held out < 100
    with pytest.raises(AccuracyGateError, match="only 8 validation samples, fewer than the minimum of 100"):
        build(options)
    assert not (work / "repo" / "few").exists()
    result = build(_options(work, "few", precision=Precision.INT8, min_validation_samples=8))
    assert result.accuracy.passed and result.manifest["gate"]["min_validation_samples"] == 8


def test_gate_report_has_intervals_and_a_red_failed_line(work: Path) -> None:
    val = work / "labelled"
    val.mkdir()
    x = np.random.default_rng(5).standard_normal((120, 3, 16, 16)).astype(np.float32)
    np.savez(val / "val.npz", x=x, labels=np.arange(120) % 10)
    buffer = io.StringIO()
    reporter = Reporter(progress=False, console=Console(file=buffer, force_terminal=True, width=200))
    from kiln.builder import Tolerance

    tight = Tolerance(max_abs_error=1e-9)
    options = _options(work, "red", precision=Precision.INT8, validation_data=val, tolerance=tight,
                       accept_accuracy_drop=True)  # fmt: skip
    result = build(options, reporter)
    text = buffer.getvalue()
    line = next(s for s in text.splitlines() if "accuracy int8" in s)
    assert "\x1b[31mfailed\x1b[0m" in line and "gate failed" in line
    assert "passed False" not in text and "ok     accuracy" not in text
    assert "warning" in text and "--accept-accuracy-drop" in text
    acc = result.manifest["accuracy"]
    assert acc["samples"] == 120 and acc["accuracy_ci"][0] <= acc["accuracy"] <= acc["accuracy_ci"][1]
    assert acc["outputs"][0]["top1_agreement_ci"][1] <= 1.0 and acc["accuracy_drop_ci"] is not None
    assert result.manifest["gate"]["accepted_accuracy_drop"] is True and result.manifest["gate"]["failures"]
    assert "[" in result.accuracy.summary() and "drop" in result.accuracy.summary()


def _images(folder: Path, count: int) -> Path:
    pil = pytest.importorskip("PIL.Image")
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(count):
        pil.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
    return folder


def test_images_need_an_explicit_or_recorded_preprocessing(work: Path) -> None:
    images = _images(work / "images", 12)
    with pytest.raises(InvalidArgumentError, match="holds images: give --preprocessing"):
        build(_options(work, "img", validation_data=images, min_validation_samples=0))
    assert not (work / "repo" / "img").exists()
    cal = CalibrationOptions(preprocessing=Preprocessing.INCEPTION)
    first = build(_options(work, "img", calibration=cal, validation_data=images, min_validation_samples=0))
    config = load_config(first.model_dir / "config.pbtxt")
    assert config.parameters["preprocessing"].string_value == "inception"
    # the next build of the same model folder finds it, and says where from
    second = build(_options(work, "img", validation_data=images, min_validation_samples=0))
    data = next(s for s in second.manifest["stages"] if s["name"] == "data")["details"]
    assert data["preprocessing"].startswith("inception (from")
    assert second.manifest["options"]["calibration"]["preprocessing"] == "inception"


USER_CONFIG = """
name: "mine"
backend: "onnxruntime"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3, 8, 8 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "old_labels.txt" } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 1234 }
parameters { key: "note" value: { string_value: "keep me" } }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""


def test_build_into_an_existing_folder_merges_the_config(work: Path) -> None:
    model_dir = work / "repo" / "mine"
    model_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(USER_CONFIG)
    (work / "classes.txt").write_text("\n".join(f"class {i}" for i in range(10)) + "\n")
    result = build(_options(work, "mine", validation_data=work / "val", labels=work / "classes.txt"))
    config = load_config(model_dir / "config.pbtxt")
    assert config.max_batch_size == 4  # the user's, --max-batch-size not given
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, 2)]  # KIND_CPU is 2
    assert config.dynamic_batching.max_queue_delay_microseconds == 1234
    assert config.parameters["note"].string_value == "keep me"
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    assert list(config.input[0].dims) == [3, 16, 16]
    assert config.output[0].label_filename == "classes.txt"
    assert (model_dir / "classes.txt").read_text().startswith("class 0")
    changes = result.manifest["config_changes"]
    assert "input 'x' dims: [3, 8, 8] -> [3, 16, 16]" in changes
    assert "output 'logits' label_filename: 'old_labels.txt' -> 'classes.txt'" in changes
    assert not any("instance_group" in c or "dynamic_batching" in c or "note" in c for c in changes)
    on_disk = json.loads((result.version_dir / "build.json").read_text())
    assert on_disk["config_changes"] == changes
    assert (model_dir / "config.pbtxt").read_text().startswith("# kiln build merged")


def test_labels_must_fit_the_classes(work: Path) -> None:
    (work / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(InvalidArgumentError, match="3 labels for 10 classes"):
        build(_options(work, "bad_labels", validation_data=work / "val", labels=work / "three.txt"))
    assert not (work / "repo" / "bad_labels").exists()
