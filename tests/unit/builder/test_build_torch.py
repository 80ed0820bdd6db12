"""PyTorch sources (the torch extra): TorchScript and torch.export programs exported to ONNX on the way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from kiln.builder import BuildOptions, build  # noqa: E402
from kiln.config import load_config  # noqa: E402


def _module() -> torch.nn.Module:
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_torch_source_builds_and_matches_torch(tmp_path: Path, kind: str) -> None:
    module = _module()
    if kind == "torchscript":
        source = tmp_path / "m.pt"
        torch.jit.save(torch.jit.trace(module, torch.randn(1, 3, 16, 16)), str(source))
    else:
        source = tmp_path / "m.pt2"
        batch = torch.export.Dim("batch", min=1, max=64)
        program = torch.export.export(module, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(source))
    result = build(
        BuildOptions(
            source=source,
            output=tmp_path / "repo" / "m",
            example_shapes={"x": (2, 3, 16, 16)},
            benchmark=False,
            progress=False,
        )
    )
    stage = result.manifest["stages"][0]
    assert stage["details"]["exported_from"] == ("torchscript" if kind == "torchscript" else "torch.export")
    assert load_config(result.model_dir / "config.pbtxt").max_batch_size == 8
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(str(result.artifact), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_torch_source_needs_shapes(tmp_path: Path) -> None:
    source = tmp_path / "m.pt"
    torch.jit.save(torch.jit.trace(_module(), torch.randn(1, 3, 16, 16)), str(source))
    from kiln.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="--shapes"):
        build(BuildOptions(source=source, output=tmp_path / "repo" / "m", progress=False))
