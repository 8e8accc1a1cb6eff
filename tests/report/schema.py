"""Validate a report.json against the JSON Schema that ships with the package."""

from __future__ import annotations

import json

from jsonschema import Draft202012Validator

from lmiflow.report.model import shipped_schema_text


def validate_report(report: dict) -> None:
    Draft202012Validator(json.loads(shipped_schema_text())).validate(report)
