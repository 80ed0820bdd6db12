"""The TensorFlow backend on real models made here: a SavedModel (auto-complete from its signature, signature
choice, UINT8 NHWC images, batching), a frozen GraphDef (config-described, checked against the graph), Triton's
TF parameters honoured or refused, and the missing-runtime message."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import tf_models
from kiln.backends import backend_class, backend_name
from kiln.backends.tensorflow import TensorFlowBackend
from kiln.config import parse_config
from kiln.errors import InvalidArgumentError, ModelConfigError, ModelLoadError
from kiln.model import Model

DETECTOR = tf_models.DETECTOR_CONFIG


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tf_models")
    tf_models.save_classifier(root / "classifier")
    tf_models.save_classifier(root / "no_default", default=False)
    tf_models.write_detector_graphdef(root / "detector.graphdef")
    return root


def repo_with(tmp_path: Path, source: Path, filename: str, config: str | None) -> Path:
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / filename).symlink_to(source, target_is_directory=source.is_dir())
    if config is not None:
        (model_dir / "config.pbtxt").write_text('name: "m"\n' + config)
    return model_dir


def load(model_dir: Path, config: str | None = None, **kwargs: object) -> Model:
    parsed = parse_config('name: "m"\n' + (config or ""))
    return Model.load(parsed, model_dir, 1, backend_name(parsed, model_dir), **kwargs)  # type: ignore[arg-type]


def images(batch: int, h: int = 4, w: int = 4) -> np.ndarray:
    return np.random.default_rng(batch).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)


def test_savedmodel_without_config_autocompletes_from_its_serving_signature(
    models_dir: Path, tmp_path: Path
) -> None:
    model_dir = repo_with(tmp_path, models_dir / "classifier", "model.savedmodel", None)
    model = load(model_dir)
    config = model.config
    assert backend_name(config, model_dir) == "tensorflow"
    assert config.platform == "tensorflow_savedmodel" and config.backend == "tensorflow"
    assert config.max_batch_size == 4
    assert {e.name: (e.data_type, list(e.dims)) for e in config.input} == {
        "image": (2, [4, 4, 3])
    }  # TYPE_UINT8
    assert {e.name: list(e.dims) for e in config.output} == {"scores": [3], "label": []}
    assert model.backend.platform == "tensorflow_savedmodel"
    batch = images(3)
    out = model.execute({"image": batch}, ["scores", "label"])
    np.testing.assert_allclose(out["scores"], tf_models.classifier_scores(batch), rtol=1e-5)
    assert out["label"].dtype == np.int64 and out["label"].shape == (3,)
    assert model.backend.settings()["signature_def"] == "serving_default"
    # only the requested outputs, in any order, each combination its own callable
    assert list(model.execute({"image": batch[:1]}, ["label"])) == ["label"]


def test_tf_signature_def_picks_another_signature(models_dir: Path, tmp_path: Path) -> None:
    model_dir = repo_with(tmp_path, models_dir / "classifier", "model.savedmodel", None)
    model = load(model_dir, 'parameters { key: "TF_SIGNATURE_DEF" value { string_value: "double" } }')
    assert [e.name for e in model.config.input] == ["x"] and [e.name for e in model.config.output] == ["y"]
    x = np.ones((2, 2), np.float32)
    np.testing.assert_array_equal(model.execute({"x": x}, ["y"])["y"], x * 2)


def test_without_serving_default_another_signature_is_used_with_a_warning(
    models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = repo_with(tmp_path, models_dir / "no_default", "model.savedmodel", None)
    with caplog.at_level(logging.WARNING, logger="kiln.backends.tensorflow"):
        model = load(model_dir)
    assert model.backend.settings()["signature_def"] == "classify"  # first non-init signature, sorted
    assert "unable to find signature 'serving_default'" in caplog.text


def test_a_missing_graph_tag_fails_the_load(models_dir: Path, tmp_path: Path) -> None:
    model_dir = repo_with(tmp_path, models_dir / "classifier", "model.savedmodel", None)
    with pytest.raises(ModelLoadError, match="tag 'gpu'"):
        load(model_dir, 'parameters { key: "TF_GRAPH_TAG" value { string_value: "gpu" } }')


def test_thread_parameters_reach_the_session(models_dir: Path, tmp_path: Path) -> None:
    model_dir = repo_with(tmp_path, models_dir / "classifier", "model.savedmodel", None)
    params = (
        'parameters { key: "TF_NUM_INTRA_THREADS" value { string_value: "2" } }\n'
        'parameters { key: "TF_NUM_INTER_THREADS" value { string_value: "1" } }\n'
        'parameters { key: "TF_USE_PER_SESSION_THREADS" value { string_value: "yes" } }\n'
        'parameters { key: "MAX_SESSION_SHARE_COUNT" value { string_value: "1" } }\n'
    )
    model = load(model_dir, params)
    settings = model.backend.settings()
    assert (
        settings["intra_op_threads"],
        settings["inter_op_threads"],
        settings["use_per_session_threads"],
    ) == (
        2,
        1,
        True,
    )
    proto = model.backend._session._config  # the ConfigProto TF made the session with
    assert proto.intra_op_parallelism_threads == 2 and proto.use_per_session_threads
    assert model.execute({"image": images(2)}, ["scores"])["scores"].shape == (2, 3)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("TF_NUM_INTRA_THREADS", "-1", "must be >= 0"),
        ("TF_NUM_INTER_THREADS", "many", "must be an integer"),
        ("TF_USE_PER_SESSION_THREADS", "maybe", "must be true/false"),
        ("MAX_SESSION_SHARE_COUNT", "2", "not implemented in Kiln"),
        ("MAX_SESSION_SHARE_COUNT", "0", "must be a positive number"),
    ],
)
def test_bad_or_unsupported_parameters_are_refused(
    models_dir: Path, tmp_path: Path, key: str, value: str, message: str
) -> None:
    model_dir = repo_with(tmp_path, models_dir / "classifier", "model.savedmodel", None)
    with pytest.raises(ModelConfigError, match=message):
        load(model_dir, f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}')


def test_graphdef_detector_runs_with_its_config(models_dir: Path, tmp_path: Path) -> None:
    model_dir = repo_with(tmp_path, models_dir / "detector.graphdef", "model.graphdef", DETECTOR)
    model = load(model_dir, DETECTOR)
    assert model.config.platform == "tensorflow_graphdef" and model.backend.platform == "tensorflow_graphdef"
    assert model.backend.signature() is None
    batch = images(2, 6, 8)
    out = model.execute({"image_tensor": batch}, ["detection_scores", "num_detections", "detection_classes"])
    np.testing.assert_allclose(out["detection_scores"], tf_models.detector_scores(batch), rtol=1e-5)
    np.testing.assert_array_equal(out["num_detections"], [4.0, 4.0])
    np.testing.assert_array_equal(out["detection_classes"][0], [1, 2, 3, 4])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('name: "image_tensor"', 'name: "images"'),
            r"no Placeholder of that name; its placeholders are \['image_tensor'\]",
        ),
        (("TYPE_UINT8", "TYPE_FP32"), "config data_type TYPE_FP32 does not match the graph's TYPE_UINT8"),
        (("dims: [ 6, 8, 3 ]", "dims: [ 48, 3 ]"), "config gives rank 3"),
        (('name: "detection_boxes"', 'name: "boxes"'), "the GraphDef has no tensor 'boxes:0'"),
    ],
    ids=["input-name", "dtype", "rank", "output-name"],
)
def test_graphdef_config_is_checked_against_the_graph(
    models_dir: Path, tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    config = DETECTOR.replace(*change)
    model_dir = repo_with(tmp_path, models_dir / "detector.graphdef", "model.graphdef", config)
    with pytest.raises(ModelConfigError, match=message):
        load(model_dir, config)


def test_graphdef_needs_a_config(models_dir: Path, tmp_path: Path) -> None:
    model_dir = repo_with(tmp_path, models_dir / "detector.graphdef", "model.graphdef", None)
    with pytest.raises(ModelConfigError, match="config lists no outputs"):
        load(model_dir, 'platform: "tensorflow_graphdef" default_model_filename: "model.graphdef"')


def test_init_ops_file_runs_after_load(models_dir: Path, tmp_path: Path) -> None:
    model_dir = repo_with(tmp_path, models_dir / "detector.graphdef", "model.graphdef", DETECTOR)
    (model_dir / "init_ops.json").write_text('{"init_ops": ["init"]}')
    param = 'parameters { key: "TF_INIT_OPS_FILE" value { string_value: "init_ops.json" } }'
    model = load(model_dir, DETECTOR + param)
    assert model.backend.settings()["init_ops"] == ["init"]
    (model_dir / "1" / "init_ops.json").write_text(
        '{"init_ops": ["no_such_op"]}'
    )  # the version folder's wins
    with pytest.raises(ModelLoadError, match="no_such_op"):
        load(model_dir, DETECTOR + param)


def test_wrong_shape_at_run_time_is_an_invalid_argument(models_dir: Path, tmp_path: Path) -> None:
    model_dir = repo_with(tmp_path, models_dir / "classifier", "model.savedmodel", None)
    model = load(model_dir)
    with pytest.raises(InvalidArgumentError, match="model rejected the request"):
        model.backend.execute({"image": images(1, 5, 4)}, ["scores"])


def test_default_filename_follows_the_platform_as_triton_does(tmp_path: Path) -> None:
    klass = backend_class("tensorflow")
    assert klass is TensorFlowBackend
    assert klass.model_filename(parse_config('platform: "tensorflow_graphdef"'), tmp_path) == "model.graphdef"
    assert (
        klass.model_filename(parse_config('platform: "tensorflow_savedmodel"'), tmp_path)
        == "model.savedmodel"
    )
    (tmp_path / "model.graphdef").write_bytes(b"")
    assert klass.model_filename(parse_config('backend: "tensorflow"'), tmp_path) == "model.graphdef"


def test_seed_style_graphdef_config_without_default_filename(models_dir: Path, tmp_path: Path) -> None:
    config = DETECTOR.replace('default_model_filename: "model.graphdef"\n', "")
    model_dir = repo_with(tmp_path, models_dir / "detector.graphdef", "model.graphdef", config)
    assert load(model_dir, config).config.default_model_filename == "model.graphdef"


def test_without_tensorflow_the_load_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "m" / "1" / "model.savedmodel").mkdir(parents=True)
    code = f"""
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(name)
from pathlib import Path
sys.meta_path.insert(0, NotInstalled())
from kiln.config import parse_config
from kiln.model import Model
try:
    Model.load(parse_config('name: "m" platform: "tensorflow_savedmodel"'), Path({str(tmp_path / "m")!r}), 1,
               "tensorflow")
except Exception as e:
    print(type(e).__name__, e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (
        "ModelLoadError TensorFlow is not installed; install it with: pip install 'kiln[tensorflow]'"
        in out.stdout
    )
