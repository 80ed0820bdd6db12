"""Every ModelConfig field has a treatment: the schema walk fails on any field the table misses, and the
check refuses, warns or passes as the table says."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import parse_config
from kiln.config.fields import FIELDS, Treatment, check_fields, markdown_table, schema_paths
from kiln.errors import ModelConfigError

DOC = Path(__file__).resolve().parents[3] / "docs" / "config-fields.md"


def test_every_field_of_the_schema_has_a_treatment() -> None:
    paths = list(schema_paths())
    assert len(paths) > 100
    missing = [p for p in paths if p not in FIELDS]
    assert missing == [], f"ModelConfig fields without a treatment in kiln.config.fields: {missing}"
    assert [p for p in FIELDS if p not in paths] == []


def test_the_docs_table_is_the_generated_one() -> None:
    assert markdown_table() in DOC.read_text(), "regenerate docs/config-fields.md (see its first lines)"


def _check(text: str, backend: str = "onnxruntime") -> list[str]:
    return check_fields(parse_config('name: "m" ' + text, "m"), backend)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('model_repository_agents { agents [ { name: "checksum" } ] }', "repository agents"),
        ("instance_group [ { rate_limiter { priority: 2 } } ]", "'instance_group.rate_limiter.priority'"),
        ('metric_tags { key: "team" value: "a" }', "'metric_tags' is not supported"),
        ('input [ { name: "x" allow_ragged_batch: true } ]', "ragged batching"),
        ('runtime: "libtorch"', "'runtime' is not supported"),
        ("optimization { graph { level: 1 } }", "only honoured by the onnxruntime/tensorflow backend"),
    ],
)
def test_refused_fields_fail_the_load_with_the_reason(text: str, message: str) -> None:
    backend = "python" if "graph" in text else "onnxruntime"
    with pytest.raises(ModelConfigError, match=message):
        _check(text, backend)


def test_harmless_fields_warn_and_implemented_ones_pass() -> None:
    warnings = _check("optimization { cuda { graphs: true } priority: PRIORITY_MAX }")
    assert len(warnings) == 2 and all("has no effect here" in w for w in warnings)
    assert _check("dynamic_batching { } max_batch_size: 4 optimization { graph { level: 1 } }") == []
    assert _check("instance_group [ { count: 2 kind: KIND_CPU } ] version_policy { all { } }") == []


def test_the_table_says_something_for_each_refusal_and_warning() -> None:
    for path, rule in FIELDS.items():
        if rule.treatment is not Treatment.IMPLEMENTED:
            assert rule.note, f"{path}: say why"
