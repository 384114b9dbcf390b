"""Render the API reference (docs/reference.md) from the CRDs, which are its one source.

The descriptions, defaults, bounds and CEL rules live in ``crds/*.yaml``; this module only lays them out,
deterministically, so a test can insist that the committed page equals what the CRDs say::

    python -m kcmail.devenv.crd_reference > docs/reference.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CRDS_DIR = Path(__file__).resolve().parents[3] / "crds"
REGENERATE = "python -m kcmail.devenv.crd_reference > docs/reference.md"

# The order a reader meets the kinds in: the resource people write first, then what it refers to.
# Kinds not listed follow alphabetically.
_KIND_ORDER = ("MailConfig", "KeycloakConnection", "ClusterKeycloakConnection")

Schema = dict[str, Any]


@dataclass(frozen=True)
class Field:
    """One property of a schema, with its dotted path from the object root (``spec.smtp.port``)."""

    path: str
    schema: Schema
    required: bool


@dataclass(frozen=True)
class Rule:
    """One ``x-kubernetes-validations`` entry and the path of the field that carries it."""

    path: str
    rule: str
    message: str


def load_crds(directory: Path = CRDS_DIR) -> list[Schema]:
    """Every CRD in ``directory``, in reading order."""
    crds = [yaml.safe_load(path.read_text()) for path in sorted(directory.glob("*.yaml"))]
    return sorted(crds, key=_kind_rank)


def _kind_rank(crd: Schema) -> tuple[int, str]:
    kind = crd["spec"]["names"]["kind"]
    return (_KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER), kind)


def stored_schema(crd: Schema) -> tuple[str, Schema]:
    """The storage version's name and its openAPIV3Schema."""
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return version["name"], version["schema"]["openAPIV3Schema"]


def iter_fields(schema: Schema, prefix: str = "") -> Iterator[Field]:
    """Every property below ``schema``, depth first in the order the CRD lists them.

    Array items appear as ``path[]`` and map values as ``path.<key>``, each with its own description.
    """
    required = set(schema.get("required", ()))
    for name, child in schema.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        yield Field(path, child, name in required)
        yield from _iter_nested(child, path)


def _iter_nested(schema: Schema, path: str) -> Iterator[Field]:
    if schema.get("type") == "array" and "items" in schema:
        yield Field(f"{path}[]", schema["items"], False)
        yield from _iter_nested(schema["items"], f"{path}[]")
    elif isinstance(schema.get("additionalProperties"), dict):
        values = schema["additionalProperties"]
        yield Field(f"{path}.<key>", values, False)
        yield from _iter_nested(values, f"{path}.<key>")
    else:
        yield from iter_fields(schema, path)


def iter_rules(schema: Schema) -> Iterator[Rule]:
    """Every CEL rule in ``schema``, with the path of the field that carries it ("" for the root)."""
    yield from _rules_of(schema, "")
    for field in iter_fields(schema):
        yield from _rules_of(field.schema, field.path)


def _rules_of(schema: Schema, path: str) -> Iterator[Rule]:
    for entry in schema.get("x-kubernetes-validations", ()):
        yield Rule(path=path, rule=_one_line(entry["rule"]), message=_one_line(entry.get("message", "")))


def render(crds: Sequence[Schema]) -> str:
    """The whole reference page."""
    groups = ", ".join(f"`{group}`" for group in sorted({crd["spec"]["group"] for crd in crds}))
    lines = [
        "# API reference",
        "",
        f"<!-- Generated from crds/*.yaml by `{REGENERATE}`; edit the CRDs, not this page. -->",
        "",
        f"The kinds of the API group {groups}. Field descriptions, defaults, bounds and validation rules",
        "are those of the CustomResourceDefinitions: the API server fills in the defaults and rejects an",
        "object that breaks a rule, with the message shown here.",
        "",
    ]
    lines += [f"- [{crd['spec']['names']['kind']}](#{crd['spec']['names']['kind'].lower()})" for crd in crds]
    for crd in crds:
        lines += ["", *_render_kind(crd)]
    return "\n".join(lines) + "\n"


def _render_kind(crd: Schema) -> list[str]:
    spec = crd["spec"]
    names = spec["names"]
    version, schema = stored_schema(crd)
    lines = [
        f"## {names['kind']}",
        "",
        _prose(schema.get("description", "")),
        "",
        "| | |",
        "|---|---|",
        f"| API version | `{spec['group']}/{version}` |",
        f"| Scope | {spec['scope']} |",
        f"| Resource | `{names['plural']}.{spec['group']}` |",
        f"| Short names | {_codes(names.get('shortNames', ()))} |",
        f"| Categories | {_codes(names.get('categories', ()))} |",
        "",
        "### Fields",
        "",
        "| Field | Type | Default | Required | Description |",
        "|---|---|---|---|---|",
    ]
    for field in iter_fields(schema):
        if field.path in ("apiVersion", "kind", "metadata"):
            continue
        default = f"`{_cell(_value(field.schema['default']))}`" if "default" in field.schema else ""
        lines.append(f"| `{_cell(field.path)}` | {_cell(_type(field.schema))} | {default} | "
                     f"{'yes' if field.required else ''} | {_prose(field.schema.get('description', ''))} |")
    rules = list(iter_rules(schema))
    if rules:
        lines += ["", "### Validation rules", "",
                  "CEL rules the API server checks on create and update; `self` is the field named in the",
                  "first column, `oldSelf` its value before the update.", "",
                  "| Field | Rule | Message |", "|---|---|---|"]
        for rule in rules:
            where = rule.path or "(root)"
            lines.append(f"| `{_cell(where)}` | `{_cell(rule.rule)}` | {_prose(rule.message)} |")
    columns = next(v for v in spec["versions"] if v["name"] == version).get("additionalPrinterColumns", ())
    if columns:
        lines += ["", "### Columns of `kubectl get`", "", "| Column | From | Shown | Description |",
                  "|---|---|---|---|"]
        for column in columns:
            shown = "always" if column.get("priority", 0) == 0 else "with `-o wide`"
            lines.append(f"| {column['name']} | `{_cell(column['jsonPath'])}` | {shown} | "
                         f"{_prose(column.get('description', ''))} |")
    return lines


def _type(schema: Schema) -> str:
    """Type, format and the schema's own bounds, as a reader of a table wants them."""
    kind = schema.get("type", "any")
    if kind == "array":
        kind = f"array of {schema.get('items', {}).get('type', 'any')}"
    elif isinstance(schema.get("additionalProperties"), dict):
        kind = f"map of {schema['additionalProperties'].get('type', 'any')}"
    parts = [f"{kind} ({schema['format']})" if "format" in schema else kind]
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{_value(v)}`" for v in schema["enum"]))
    for key, label in (("minimum", "min"), ("maximum", "max"), ("minLength", "min length"),
                       ("maxLength", "max length"), ("minItems", "min items"), ("maxItems", "max items"),
                       ("maxProperties", "max entries")):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if "pattern" in schema:
        parts.append(f"pattern `{schema['pattern']}`")
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "map":
        parts.append("list keyed by " + _codes(schema.get("x-kubernetes-list-map-keys", ())))
    elif list_type == "set":
        parts.append("unique items")
    return "; ".join(parts)


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _codes(values: Sequence[str]) -> str:
    return ", ".join(f"`{v}`" for v in values)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell, code spans included (GFM unescapes ``\\|`` there too)."""
    return text.replace("|", "\\|")


def _prose(text: str) -> str:
    """A description as one table cell: ``<tenant>`` must not vanish as an HTML tag, nor ``*`` turn italic."""
    text = _one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _cell(text.replace("*", "\\*"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kcmail.devenv.crd_reference",
                                     description="Print the API reference rendered from the CRDs.")
    parser.add_argument("crds", nargs="?", type=Path, default=CRDS_DIR,
                        help=f"the directory of the CRDs (default {CRDS_DIR})")
    args = parser.parse_args(argv)
    sys.stdout.write(render(load_crds(args.crds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
