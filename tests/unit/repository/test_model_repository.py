"""The model repository on disk: version policies and reading a model's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import parse_config
from kiln.errors import ModelConfigError
from kiln.examples import models, write_model
from kiln.repository import ModelRepository


def test_version_policies(tmp_path: Path) -> None:
    for v in (1, 2, 5):
        write_model(tmp_path, "m", models.add_sub([2]), None, version=v)
    (tmp_path / "m" / "not_a_version").mkdir()
    d = tmp_path / "m"
    assert ModelRepository.versions(d, parse_config("")) == [5]
    assert ModelRepository.versions(d, parse_config("version_policy: { latest: { num_versions: 2 } }")) == [
        2,
        5,
    ]
    assert ModelRepository.versions(d, parse_config("version_policy: { all: {} }")) == [1, 2, 5]
    assert ModelRepository.versions(
        d, parse_config("version_policy: { specific: { versions: [1, 9] } }")
    ) == [1]


def test_config_name_must_match_directory(tmp_path: Path) -> None:
    write_model(tmp_path, "m", models.add_sub([2]), 'name: "other"\n')
    with pytest.raises(ModelConfigError, match="does not match the model directory name"):
        ModelRepository.read_config("m", tmp_path / "m")
