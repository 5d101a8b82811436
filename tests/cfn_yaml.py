"""Load CloudFormation / SAM templates written in YAML, short intrinsic tags included.

CloudFormation's YAML dialect adds short tags (``!Ref X``, ``!Sub "..."``, ``!GetAtt A.B``...) that a
plain YAML loader rejects. This loader turns each into the long JSON form CloudFormation itself uses
(``{"Ref": "X"}``, ``{"Fn::Sub": "..."}``, ``{"Fn::GetAtt": ["A", "B"]}``), so tests and tools can
walk a template as ordinary dicts and lists. It stays strict where CloudFormation is strict: unknown
tags and duplicate keys are errors, and dates stay strings (``AWSTemplateFormatVersion: 2010-09-09``).
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

# Tags whose long form is "Fn::<Name>" with the node's value unchanged (the last six only appear in
# a template's Rules section).
FN_TAGS: tuple[str, ...] = (
    "And",
    "Base64",
    "Cidr",
    "Equals",
    "FindInMap",
    "GetAZs",
    "If",
    "ImportValue",
    "Join",
    "Length",
    "Not",
    "Or",
    "Select",
    "Split",
    "Sub",
    "ToJsonString",
    "Transform",
    "Contains",
    "EachMemberEquals",
    "EachMemberIn",
    "RefAll",
    "ValueOf",
    "ValueOfAll",
)


class CfnLoader(yaml.SafeLoader):
    """SafeLoader plus CloudFormation's short intrinsic tags; rejects duplicate mapping keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# CloudFormation reads 2010-09-09 as a string; YAML 1.1 would make it a datetime.date.
CfnLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _node_value(loader: CfnLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    raise yaml.constructor.ConstructorError(None, None, f"unexpected node {node!r}", node.start_mark)


def _fn_constructor(name: str) -> Any:
    def construct(loader: CfnLoader, node: yaml.Node) -> dict[str, Any]:
        return {f"Fn::{name}": _node_value(loader, node)}

    return construct


def _construct_ref(loader: CfnLoader, node: yaml.Node) -> dict[str, Any]:
    return {"Ref": _node_value(loader, node)}


def _construct_condition(loader: CfnLoader, node: yaml.Node) -> dict[str, Any]:
    return {"Condition": _node_value(loader, node)}


def _construct_getatt(loader: CfnLoader, node: yaml.Node) -> dict[str, Any]:
    value = _node_value(loader, node)
    if isinstance(value, str):
        # "Resource.Attr.Sub" -> ["Resource", "Attr.Sub"]: only the first dot separates the resource.
        resource, dot, attribute = value.partition(".")
        if not dot or not resource or not attribute:
            raise yaml.constructor.ConstructorError(
                None, None, f"!GetAtt {value!r}: expected Resource.Attribute", node.start_mark
            )
        return {"Fn::GetAtt": [resource, attribute]}
    return {"Fn::GetAtt": value}


for _name in FN_TAGS:
    CfnLoader.add_constructor(f"!{_name}", _fn_constructor(_name))
CfnLoader.add_constructor("!Ref", _construct_ref)
CfnLoader.add_constructor("!Condition", _construct_condition)
CfnLoader.add_constructor("!GetAtt", _construct_getatt)


def loads(text: str) -> Any:
    """Parse one YAML document in CloudFormation's dialect."""
    return yaml.load(text, Loader=CfnLoader)  # noqa: S506  # CfnLoader is a SafeLoader subclass


def load_template(path: Path) -> dict[str, Any]:
    """Load a template file; the top level must be a mapping with a Resources section."""
    data = loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise ValueError(f"{path}: not a CloudFormation template (no Resources mapping)")
    return data
