"""The workflow schema's enums are the named choices of gaugeflow.choices (one source)."""

from __future__ import annotations

from pathlib import Path

import yaml

from gaugeflow import choices

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"

# the key an enum sits under in the schema -> the tuple it must equal
CHOICE_OF_KEY = {
    "estimator": choices.ESTIMATORS,
    "assembly": choices.ASSEMBLIES,
    "device": choices.DEVICES,
    "action_method": choices.ACTION_METHODS,
    "lr_schedule": choices.LR_SCHEDULES,
    "amp_dtype": choices.AMP_DTYPES,
    "dtype": choices.DTYPES,
    "on_failure": ("stop", "record"),  # the workflow's own option; no library code reads it
    "omp_wait_policy": ("PASSIVE", "ACTIVE"),  # the workflow's own: its jobs' OMP_WAIT_POLICY
}
_KEYWORDS = {"properties", "$defs", "items", "additionalProperties", "default"}


def enums(node, path=()):
    """(path, enum) of every enum in a schema; path ends with the key it sits under."""
    if isinstance(node, dict):
        if "enum" in node:
            yield path, node["enum"]
        for key, value in node.items():
            yield from enums(value, path + (key,))
    elif isinstance(node, list):
        for value in node:
            yield from enums(value, path)


def owner(path: tuple) -> str:
    named = [p for p in path if p not in _KEYWORDS]
    return named[-1] if named else ""


def test_every_schema_enum_is_the_matching_tuple_of_choices():
    schema = yaml.safe_load(SCHEMA.read_text())
    found = list(enums(schema))
    assert {owner(p) for p, _ in found} >= {"estimator", "assembly", "device"}
    for path, values in found:
        key = owner(path)
        where = "/".join(path)
        assert key in CHOICE_OF_KEY, f"schema enum at {where} has no tuple in gaugeflow.choices"
        assert len(values) == len(set(values)), f"schema enum at {where} repeats a value"
        assert set(values) == set(CHOICE_OF_KEY[key]), (
            f"schema enum at {where} is {values}; gaugeflow.choices says {CHOICE_OF_KEY[key]}"
        )


def test_every_estimator_has_a_label_and_choices_are_distinct():
    assert set(choices.ESTIMATOR_LABELS) == set(choices.ESTIMATORS)
    assert len(set(choices.ESTIMATOR_LABELS.values())) == len(choices.ESTIMATORS)
    for name in choices.__all__:
        value = getattr(choices, name)
        assert len(value) == len(set(value)), name
