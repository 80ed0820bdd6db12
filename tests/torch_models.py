"""Tiny TorchScript / torch.export models and their config.pbtxt files, built in the tests (torch imported lazily
so that collecting the suite does not need it)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any


@cache
def _modules() -> dict[str, Any]:
    import torch
    from torch import Tensor

    class AddSub(torch.nn.Module):
        """Triton's classic add_sub: positional INPUT__0/INPUT__1 -> (sum, difference)."""

        def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
            return a + b, a - b

    class Named(torch.nn.Module):
        """Inputs by forward argument name (config order differs from the forward's)."""

        def forward(self, x: Tensor, scale: Tensor) -> Tensor:
            return x * scale

    class DictOut(torch.nn.Module):
        def forward(self, x: Tensor) -> dict[str, Tensor]:
            return {"logits": x * 2.0, "mask": x > 0}

    class DictIn(torch.nn.Module):
        def forward(self, inputs: dict[str, Tensor]) -> Tensor:
            return inputs["a"] * 10 + inputs["b"]

    class Flags(torch.nn.Module):
        """BOOL in, BOOL and INT64 out."""

        def forward(self, flags: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
            return torch.logical_not(flags), torch.where(flags, values, torch.zeros_like(values))

    class Strings(torch.nn.Module):
        def forward(self, text: list[str]) -> list[str]:
            return [t.upper() for t in text]

    class Grad(torch.nn.Module):
        """Reports whether autograd is off and whether inference mode is on while it runs."""

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            on = torch.is_grad_enabled()
            inference = torch.zeros(1).is_inference()
            return x + 0, torch.tensor([[float(on), float(inference)]]).expand(x.shape[0], 2)

    class Mlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x)

    return {
        "add_sub": torch.jit.script(AddSub()),
        "named": torch.jit.script(Named()),
        "dict_out": torch.jit.script(DictOut()),
        "dict_in": torch.jit.script(DictIn()),
        "flags": torch.jit.script(Flags()),
        "strings": torch.jit.script(Strings()),
        "grad": torch.jit.script(Grad()),
        "mlp_traced": torch.jit.trace(Mlp().eval(), torch.zeros(2, 16)),
        "mlp_eager": Mlp().eval(),
    }


CONFIGS = {
    "add_sub": """platform: "pytorch_libtorch" max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 2000 }
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [4] }, { name: "INPUT__1" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [4] }, { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [4] }]""",
    "named": """backend: "pytorch" max_batch_size: 4
input [{ name: "scale" data_type: TYPE_FP32 dims: [1] }, { name: "x" data_type: TYPE_FP32 dims: [3] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]""",
    "dict_out": """backend: "pytorch" max_batch_size: 4
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [2] }]
output [{ name: "mask" data_type: TYPE_BOOL dims: [2] }, { name: "logits" data_type: TYPE_FP32 dims: [2] }]""",
    "dict_in": """backend: "pytorch" max_batch_size: 4
input [{ name: "b" data_type: TYPE_INT32 dims: [2] }, { name: "a" data_type: TYPE_INT32 dims: [2] }]
output [{ name: "OUTPUT__0" data_type: TYPE_INT32 dims: [2] }]""",
    "flags": """backend: "pytorch" max_batch_size: 4
input [{ name: "flags" data_type: TYPE_BOOL dims: [3] }, { name: "values" data_type: TYPE_INT64 dims: [3] }]
output [{ name: "NOT__0" data_type: TYPE_BOOL dims: [3] }, { name: "KEPT__1" data_type: TYPE_INT64 dims: [3] }]""",
    "strings": """backend: "pytorch" max_batch_size: 8
input [{ name: "text" data_type: TYPE_STRING dims: [1] reshape { shape: [] } }]
output [{ name: "OUTPUT__0" data_type: TYPE_STRING dims: [1] reshape { shape: [] } }]""",
    "grad": """backend: "pytorch" max_batch_size: 4
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [1] }, { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [2] }]""",
    "threads": """backend: "pytorch" max_batch_size: 4
parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "1" } }
parameters { key: "INFERENCE_MODE" value: { string_value: "false" } }
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [1] }, { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [2] }]""",
    "mlp_traced": """platform: "pytorch_libtorch" max_batch_size: 16
dynamic_batching { max_queue_delay_microseconds: 1000 }
instance_group [{ count: 2 kind: KIND_CPU }]
parameters { key: "ENABLE_WEIGHT_SHARING" value: { string_value: "true" } }
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [4] }]""",
}

MODEL_OF = {"threads": "grad"}  # configs that serve another entry's module


def write_torchscript(repo: Path, name: str, config: str | None = None, model: str | None = None) -> Path:
    """``repo/name/1/model.pt`` (the model ``model`` or ``name`` of the table) and its config.pbtxt."""
    import torch

    module = _modules()[model or name]
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    torch.jit.save(module, str(repo / name / "1" / "model.pt"))
    (repo / name / "config.pbtxt").write_text((config if config is not None else CONFIGS[name]) + "\n")
    return repo / name


def write_exported(repo: Path, name: str, config: str) -> Path:
    """``repo/name/1/model.pt2``: the MLP through torch.export with a dynamic batch dimension."""
    import torch

    module = _modules()["mlp_eager"]
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(module, (torch.zeros(2, 16),), dynamic_shapes={"x": {0: batch}})
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(repo / name / "1" / "model.pt2"))
    (repo / name / "config.pbtxt").write_text(config + "\n")
    return repo / name


def build_repository(root: Path) -> Path:
    for name in CONFIGS:
        write_torchscript(root, name, model=MODEL_OF.get(name))
    write_exported(
        root,
        "mlp_export",
        'backend: "pytorch" default_model_filename: "model.pt2" max_batch_size: 16\n'
        "dynamic_batching { max_queue_delay_microseconds: 1000 }",
    )
    return root


def mlp_reference(x: Any) -> Any:
    """The MLP's outputs computed in process (the same seeded weights)."""
    import torch

    with torch.no_grad():
        return _modules()["mlp_eager"](torch.from_numpy(x)).numpy()
