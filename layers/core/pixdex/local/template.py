"""Read template.yaml the way CloudFormation would, for the parts the local stack recreates.

The local stack must create exactly the buckets, queues, rules and function wiring the template declares,
so it derives them from the template instead of repeating them in code. Only the intrinsic functions the
template uses for those parts are evaluated; anything else is left unresolved and ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LOCAL_ACCOUNT_ID = "123456789012"  # moto's default account


class CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short tags (!Sub, !Ref, ...) into their long form."""


def _construct(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    """Any short tag !X becomes {"Fn::X": value} (!Ref and !Condition keep their names), as CloudFormation
    reads them; the tag set grows over time, so none is listed."""
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if tag_suffix in ("Ref", "Condition"):
        return {tag_suffix: value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


CfnLoader.add_multi_constructor("!", _construct)


def load_template(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=CfnLoader)  # noqa: S506  # CfnLoader is a SafeLoader
    if not isinstance(data, dict) or "Resources" not in data:
        raise ValueError(f"{path} is not a CloudFormation template")
    return data


@dataclass(frozen=True)
class QueueSpec:
    logical_id: str
    name: str
    arn: str
    dead_letter: str | None = None       # logical id of the DLQ
    max_receive_count: int | None = None
    visibility_timeout: int = 30


@dataclass(frozen=True)
class RuleSpec:
    logical_id: str
    pattern: dict[str, Any]
    target_queues: tuple[str, ...]


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    name: str            # the short name: compress, analyze, remove, query
    code_uri: Path
    handler: str
    queue: str | None = None
    batch_size: int = 10
    routes: tuple[tuple[str, str], ...] = ()   # (METHOD, /path/{param})


@dataclass(frozen=True)
class StackSpec:
    buckets: dict[str, str]                       # logical id -> bucket name
    eventbridge_buckets: tuple[str, ...]          # logical ids with EventBridge notifications on
    queues: dict[str, QueueSpec]
    rules: dict[str, RuleSpec]
    functions: dict[str, FunctionSpec] = field(default_factory=dict)
    # logical id -> CORS rules in the S3 API's shape, so browsers meet the same rules locally as in AWS
    bucket_cors: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class _Resolver:
    def __init__(self, template: Mapping[str, Any], *, stack_name: str, region: str, account_id: str,
                 parameters: Mapping[str, str]) -> None:
        self.t = template
        self.resources: Mapping[str, Any] = template["Resources"]
        self.pseudo = {
            "AWS::StackName": stack_name, "AWS::Region": region, "AWS::AccountId": account_id,
            "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com", "AWS::NoValue": None,
        }
        self.params = {
            name: parameters.get(name, str(spec.get("Default", "")))
            for name, spec in (template.get("Parameters") or {}).items()
        }
        self.conditions = template.get("Conditions") or {}

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.value(v) for v in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Ref":
                return self.ref(arg)
            if fn == "Fn::Sub":
                return self.sub(arg)
            if fn == "Fn::GetAtt":
                return self.get_att(*arg)
            if fn == "Fn::If":
                cond, yes, no = arg
                return self.value(yes if self.condition(cond) else no)
            if fn == "Fn::Join":
                sep, items = arg
                return sep.join(str(self.value(i)) for i in self.value(items))
            if fn == "Fn::Select":
                idx, items = arg
                return self.value(items)[int(self.value(idx))]
            if fn == "Fn::Split":
                sep, s = arg
                return str(self.value(s)).split(sep)
        return {k: self.value(v) for k, v in node.items()}

    def condition(self, name_or_node: Any) -> bool:
        node = self.conditions[name_or_node] if isinstance(name_or_node, str) else name_or_node
        if isinstance(node, dict) and len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Fn::Equals":
                return bool(str(self.value(arg[0])) == str(self.value(arg[1])))
            if fn == "Fn::Not":
                return not self.condition(arg[0])
            if fn == "Fn::And":
                return all(self.condition(a) for a in arg)
            if fn == "Fn::Or":
                return any(self.condition(a) for a in arg)
            if fn == "Condition":
                return self.condition(arg)
        raise ValueError(f"cannot evaluate condition {node!r}")

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            spec = (self.t.get("Parameters") or {}).get(name) or {}
            if spec.get("Type") == "CommaDelimitedList":
                return [item.strip() for item in self.params[name].split(",")]
            return self.params[name]
        res = self.resources.get(name)
        if res is None:
            raise KeyError(f"!Ref to unknown {name}")
        rtype, props = res.get("Type"), res.get("Properties") or {}
        if rtype == "AWS::S3::Bucket":
            return self.value(props.get("BucketName", name.lower()))
        if rtype == "AWS::SQS::Queue":
            return f"https://sqs.{self.pseudo['AWS::Region']}.amazonaws.com/{self.pseudo['AWS::AccountId']}/" \
                   f"{self.queue_name(name)}"
        return name

    def get_att(self, name: str, attr: str) -> Any:
        res = self.resources[name]
        rtype = res.get("Type")
        if rtype == "AWS::SQS::Queue" and attr == "Arn":
            return f"arn:aws:sqs:{self.pseudo['AWS::Region']}:{self.pseudo['AWS::AccountId']}:{self.queue_name(name)}"
        if rtype == "AWS::SQS::Queue" and attr == "QueueName":
            return self.queue_name(name)
        if rtype == "AWS::S3::Bucket" and attr == "Arn":
            return f"arn:aws:s3:::{self.ref(name)}"
        return f"{name}.{attr}"

    def queue_name(self, logical_id: str) -> str:
        props = self.resources[logical_id].get("Properties") or {}
        if "QueueName" in props:
            return str(self.value(props["QueueName"]))
        return f"{self.pseudo['AWS::StackName']}-{logical_id}"

    def sub(self, arg: Any) -> str:
        if isinstance(arg, list):
            text, local_vars = arg[0], {k: self.value(v) for k, v in arg[1].items()}
        else:
            text, local_vars = arg, {}

        def repl(m: re.Match[str]) -> str:
            token = m.group(1)
            if token.startswith("!"):
                return "${" + token[1:] + "}"
            if token in local_vars:
                return str(local_vars[token])
            if "." in token and token.split(".", 1)[0] in self.resources:
                return str(self.get_att(*token.split(".", 1)))
            return str(self.ref(token))

        return re.sub(r"\$\{([^}]+)\}", repl, text)


def read_stack(path: Path, *, stack_name: str = "pixdex-local", region: str = "us-east-1",
               account_id: str = LOCAL_ACCOUNT_ID, parameters: Mapping[str, str] | None = None) -> StackSpec:
    template = load_template(path)
    r = _Resolver(template, stack_name=stack_name, region=region, account_id=account_id,
                  parameters=parameters or {})
    resources: Mapping[str, Any] = template["Resources"]
    arn_to_queue: dict[str, str] = {}
    buckets: dict[str, str] = {}
    eb_buckets: list[str] = []
    bucket_cors: dict[str, list[dict[str, Any]]] = {}
    for lid, res in resources.items():
        rtype = res.get("Type")
        if rtype == "AWS::S3::Bucket":
            buckets[lid] = str(r.ref(lid))
            cors = ((res.get("Properties") or {}).get("CorsConfiguration") or {}).get("CorsRules")
            if cors:
                bucket_cors[lid] = [_s3_cors_rule(r.value(rule)) for rule in cors]
            notif = (res.get("Properties") or {}).get("NotificationConfiguration") or {}
            if (notif.get("EventBridgeConfiguration") or {}).get("EventBridgeEnabled") in (True, "true"):
                eb_buckets.append(lid)
        elif rtype == "AWS::SQS::Queue":
            arn_to_queue[r.get_att(lid, "Arn")] = lid
    queues: dict[str, QueueSpec] = {}
    for lid, res in resources.items():
        if res.get("Type") != "AWS::SQS::Queue":
            continue
        props = r.value(res.get("Properties") or {})
        redrive = props.get("RedrivePolicy") or {}
        if isinstance(redrive, str):
            redrive = json.loads(redrive)
        queues[lid] = QueueSpec(
            logical_id=lid,
            name=r.queue_name(lid),
            arn=r.get_att(lid, "Arn"),
            dead_letter=arn_to_queue.get(redrive.get("deadLetterTargetArn", "")),
            max_receive_count=int(redrive["maxReceiveCount"]) if "maxReceiveCount" in redrive else None,
            visibility_timeout=int(props.get("VisibilityTimeout", 30)),
        )
    rules: dict[str, RuleSpec] = {}
    for lid, res in resources.items():
        if res.get("Type") != "AWS::Events::Rule":
            continue
        props = r.value(res.get("Properties") or {})
        targets = tuple(arn_to_queue[t["Arn"]] for t in props.get("Targets", []) if t.get("Arn") in arn_to_queue)
        rules[lid] = RuleSpec(logical_id=lid, pattern=props["EventPattern"], target_queues=targets)
    functions: dict[str, FunctionSpec] = {}
    globals_fn = (template.get("Globals") or {}).get("Function") or {}
    for lid, res in resources.items():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        props = res.get("Properties") or {}
        if props.get("PackageType", globals_fn.get("PackageType")) == "Image":
            # Container-image functions: the handler file is the one the Dockerfile beside it copies in.
            meta = res.get("Metadata") or {}
            code_uri = Path(str(meta.get("Dockerfile", "Dockerfile"))).parent
            command = ((props.get("ImageConfig") or {}).get("Command") or ["app.lambda_handler"])
            handler = str(r.value(command[0]))
        else:
            code_uri = Path(str(r.value(props.get("CodeUri", globals_fn.get("CodeUri", ".")))))
            handler = str(r.value(props.get("Handler", globals_fn.get("Handler", "app.lambda_handler"))))
        queue, batch, routes = None, 10, []
        for ev in (props.get("Events") or {}).values():
            ev_props = ev.get("Properties") or {}
            if ev.get("Type") == "SQS":
                queue = arn_to_queue.get(r.value(ev_props["Queue"]))
                batch = int(r.value(ev_props.get("BatchSize", 10)))
            elif ev.get("Type") == "HttpApi" and "Path" in ev_props:
                routes.append((str(ev_props.get("Method", "ANY")).upper(), str(ev_props["Path"])))
        name = code_uri.name or lid
        functions[name] = FunctionSpec(
            logical_id=lid, name=name, code_uri=path.parent / code_uri, handler=handler,
            queue=queue, batch_size=batch, routes=tuple(routes),
        )
    return StackSpec(buckets=buckets, eventbridge_buckets=tuple(eb_buckets), queues=queues, rules=rules,
                     functions=functions, bucket_cors=bucket_cors)


# CloudFormation's CorsRule property names -> the S3 API's (PutBucketCors).
_CORS_KEYS = {"AllowedHeaders": "AllowedHeaders", "AllowedMethods": "AllowedMethods",
              "AllowedOrigins": "AllowedOrigins", "ExposedHeaders": "ExposeHeaders", "MaxAge": "MaxAgeSeconds",
              "Id": "ID"}


def _s3_cors_rule(rule: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cfn, s3 in _CORS_KEYS.items():
        if cfn in rule:
            out[s3] = int(rule[cfn]) if cfn == "MaxAge" else rule[cfn]
    return out
