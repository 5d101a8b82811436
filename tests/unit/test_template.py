"""Invariants of template.yaml that cfn-lint cannot see, and the tools that check the deployment.

cfn-lint and `sam validate --lint` (.ci/lint-template) check that the template is valid
CloudFormation; these tests check that it says what pixdex needs: every queue has a dead-letter
queue, every rule feeds exactly one queue, buckets are private and encrypted, IAM is scoped, the
local stack's naming contract holds, and the inline custom resource really talks to OpenSearch's
security API correctly.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from pixdex import constants
from tests.cfn_yaml import load_template, loads

REPO = Path(__file__).resolve().parents[2]
ORIGINALS = "${NamePrefix}-originals-${AWS::AccountId}-${AWS::Region}"
DERIVATIVES = "${NamePrefix}-derivatives-${AWS::AccountId}-${AWS::Region}"
PIPELINE = {"CompressFunction": "CompressQueue", "AnalyzeFunction": "AnalyzeQueue", "RemoveFunction": "RemoveQueue"}
# The functions that run models are container images (their runtimes exceed a zip function's 250 MB).
IMAGE_FUNCTIONS = {"AnalyzeFunction", "QueryFunction"}
ZIP_FUNCTIONS = {"CompressFunction", "RemoveFunction"}
LAMBDA_BASE = "public.ecr.aws/lambda/python:3.12"
RULES = {"CompressRule": "Object Created", "AnalyzeRule": "Object Created", "RemoveRule": "Object Deleted"}
ROUTES = {
    ("GET", "/search"), ("POST", "/search/image"), ("GET", "/images/{id}"), ("DELETE", "/images/{id}"),
    ("GET", "/images/{id}/similar"), ("GET", "/images/{id}/duplicates"), ("GET", "/images/{id}/faces"),
    ("GET", "/faces/search"), ("POST", "/classify"), ("POST", "/recognize"), ("POST", "/uploads"),
    ("GET", "/stats"), ("GET", "/health"), ("GET", "/openapi.json"),
}  # fmt: skip
PUBLIC_ROUTES = {("GET", "/health"), ("GET", "/openapi.json")}
# X-Ray has no resource-level permissions: these actions only ever accept Resource "*".
STAR_RESOURCE_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
# The ECS agent's AWS-maintained policy on the GPU instances is the one managed policy in the stack.
MANAGED_POLICIES = {
    "BatchInstanceRole": {"arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"}
}


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(REPO / "template.yaml")


def of_type(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def props(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    resource: dict[str, Any] = template["Resources"][logical_id]
    return resource.get("Properties", {})  # type: ignore[no-any-return]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def variants(value: Any) -> Iterator[Any]:
    """Every concrete form a value takes over its Fn::If branches (AWS::NoValue branches dropped)."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        for branch in value["Fn::If"][1:]:
            if branch != {"Ref": "AWS::NoValue"}:
                yield from variants(branch)
    else:
        yield value


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for item in as_list(document["Statement"]) for s in variants(item)]


def getatt(value: Any) -> tuple[str, str]:
    assert isinstance(value, dict) and "Fn::GetAtt" in value, value
    resource, attribute = value["Fn::GetAtt"]
    return str(resource), str(attribute)


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)


def sub_strings(value: Any) -> list[str]:
    out = []
    for node in walk(value):
        if isinstance(node, dict) and "Fn::Sub" in node:
            sub = node["Fn::Sub"]
            out.append(sub if isinstance(sub, str) else sub[0])
    return out


def role_documents(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, resource in template["Resources"].items():
        p = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            for policy in p.get("Policies", []):
                yield logical_id, policy["PolicyDocument"]
        elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            yield logical_id, p["PolicyDocument"]


def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return of_type(template, "AWS::Serverless::Function") | of_type(template, "AWS::Lambda::Function")


def effective(template: dict[str, Any], fn: dict[str, Any], key: str) -> Any:
    """A function property as SAM applies it: the function's own value, else Globals."""
    own = fn.get("Properties", {})
    if key in own:
        return own[key]
    return template.get("Globals", {}).get("Function", {}).get(key)


def _load_script(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body runs.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def package_size() -> ModuleType:
    return _load_script("package_size", REPO / ".ci" / "package_size.py")


def handler_source(template: dict[str, Any], logical_id: str) -> tuple[str, str]:
    """(folder of the handler file, handler) of a zip or an image function, as the local stack reads them."""
    resource = template["Resources"][logical_id]
    p = resource["Properties"]
    if p.get("PackageType") == "Image":
        return str(Path(resource["Metadata"]["Dockerfile"]).parent) + "/", p["ImageConfig"]["Command"][0]
    return p["CodeUri"], p["Handler"]


# ---------------------------------------------------------------- the YAML loader


def test_loader_turns_short_tags_into_long_form() -> None:
    doc = loads(
        """
        a: !Ref X
        b: !GetAtt Res.Attr.Deep
        c: !Sub "${X}-y"
        d: !If [Cond, !Ref A, !Ref AWS::NoValue]
        e: !Condition IsProd
        f: !Select [0, !GetAZs ""]
        g: !Join ["-", [a, b]]
        h: 2010-09-09
        """
    )
    assert doc == {
        "a": {"Ref": "X"},
        "b": {"Fn::GetAtt": ["Res", "Attr.Deep"]},
        "c": {"Fn::Sub": "${X}-y"},
        "d": {"Fn::If": ["Cond", {"Ref": "A"}, {"Ref": "AWS::NoValue"}]},
        "e": {"Condition": "IsProd"},
        "f": {"Fn::Select": [0, {"Fn::GetAZs": ""}]},
        "g": {"Fn::Join": ["-", ["a", "b"]]},
        "h": "2010-09-09",
    }


@pytest.mark.parametrize(
    "text",
    ["a: 1\na: 2\n", "a: !Bogus x\n", "a: !GetAtt NoDot\n", "a: !!python/object:os.system x\n"],
    ids=["duplicate-key", "unknown-tag", "getatt-without-attribute", "python-tag"],
)
def test_loader_rejects_what_cloudformation_rejects(text: str) -> None:
    with pytest.raises(yaml.YAMLError):
        loads(text)


# ---------------------------------------------------------------- contract with the local stack


def test_buckets_are_named_by_the_shared_sub(template: dict[str, Any]) -> None:
    assert props(template, "OriginalsBucket")["BucketName"] == {"Fn::Sub": ORIGINALS}
    assert props(template, "DerivativesBucket")["BucketName"] == {"Fn::Sub": DERIVATIVES}
    events = props(template, "OriginalsBucket")["NotificationConfiguration"]["EventBridgeConfiguration"]
    assert events == {"EventBridgeEnabled": True}
    assert "NotificationConfiguration" not in props(template, "DerivativesBucket")


def test_every_queue_has_a_dead_letter_queue(template: dict[str, Any]) -> None:
    queues = of_type(template, "AWS::SQS::Queue")
    dead_letter = {q for q in queues if q.endswith("DeadLetterQueue")}
    main = set(queues) - dead_letter
    assert main == {"CompressQueue", "AnalyzeQueue", "RemoveQueue"}
    used_dlqs = []
    for name in main:
        redrive = props(template, name)["RedrivePolicy"]
        dlq, attribute = getatt(redrive["deadLetterTargetArn"])
        assert (dlq, attribute) == (name.replace("Queue", "DeadLetterQueue"), "Arn")
        count = redrive["maxReceiveCount"]
        assert isinstance(count, int) or count == {"Ref": "MaxReceiveCount"}
        used_dlqs.append(dlq)
    assert sorted(used_dlqs) == sorted(dead_letter), "each DLQ serves exactly one queue"
    for dlq in dead_letter:
        assert "RedrivePolicy" not in props(template, dlq)
        assert props(template, dlq)["MessageRetentionPeriod"] == 1209600  # the SQS maximum: 14 days


def test_rules_feed_exactly_one_queue_from_the_originals_bucket(template: dict[str, Any]) -> None:
    rules = of_type(template, "AWS::Events::Rule")
    assert set(rules) == set(RULES)
    targeted = []
    for name, detail_type in RULES.items():
        p = props(template, name)
        pattern = p["EventPattern"]
        assert pattern["source"] == ["aws.s3"]
        assert pattern["detail-type"] == [detail_type]
        assert pattern["detail"]["bucket"]["name"] == [{"Fn::Sub": ORIGINALS}]
        (target,) = p["Targets"]
        queue, attribute = getatt(target["Arn"])
        assert attribute == "Arn" and template["Resources"][queue]["Type"] == "AWS::SQS::Queue"
        assert getatt(target["DeadLetterConfig"]["Arn"]) == (queue.replace("Queue", "DeadLetterQueue"), "Arn")
        targeted.append(queue)
    assert sorted(targeted) == sorted(PIPELINE.values())


def test_queue_policies_let_only_their_rule_send(template: dict[str, Any]) -> None:
    policies = of_type(template, "AWS::SQS::QueuePolicy")
    rule_of = {
        getatt(props(template, rule)["Targets"][0]["Arn"])[0]: rule for rule in of_type(template, "AWS::Events::Rule")
    }
    covered = set()
    for p in (x["Properties"] for x in policies.values()):
        queues = {q["Ref"] for q in p["Queues"]}
        main = next(q for q in queues if not q.endswith("DeadLetterQueue"))
        assert queues == {main, main.replace("Queue", "DeadLetterQueue")}
        sends = [s for s in statements(p["PolicyDocument"]) if s["Effect"] == "Allow"]
        assert len(sends) == 1
        (send,) = sends
        assert send["Principal"] == {"Service": "events.amazonaws.com"}
        assert send["Action"] == "sqs:SendMessage"
        assert send["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [rule_of[main], "Arn"]}}}
        assert {getatt(r)[0] for r in send["Resource"]} == queues
        assert any(
            s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
            for s in statements(p["PolicyDocument"])
        )
        covered.add(main)
    assert covered == set(PIPELINE.values())


def test_pipeline_functions_consume_their_queue_with_partial_batch_failures(template: dict[str, Any]) -> None:
    for name, queue in PIPELINE.items():
        p = props(template, name)
        assert handler_source(template, name) == (
            f"functions/{name.removesuffix('Function').lower()}/",
            "app.lambda_handler",
        )
        (event,) = p["Events"].values()
        assert event["Type"] == "SQS"
        e = event["Properties"]
        assert getatt(e["Queue"]) == (queue, "Arn")
        assert e["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert 1 <= e["BatchSize"] <= 10
        # Lambda refuses a queue whose visibility is below the function timeout; six times is
        # what AWS recommends so throttled retries never expose a message still being worked on.
        assert props(template, queue)["VisibilityTimeout"] >= 6 * p["Timeout"]
        reserved = p["ReservedConcurrentExecutions"]
        assert e["ScalingConfig"]["MaximumConcurrency"] == reserved


def test_query_function_serves_every_route(template: dict[str, Any]) -> None:
    p = props(template, "QueryFunction")
    assert handler_source(template, "QueryFunction") == ("functions/query/", "app.lambda_handler")
    routes = {}
    for event in p["Events"].values():
        assert event["Type"] == "HttpApi"
        e = event["Properties"]
        assert e["ApiId"] == {"Ref": "HttpApi"}
        routes[(e["Method"], e["Path"])] = e.get("Auth", {}).get("Authorizer")
    assert set(routes) == ROUTES
    assert {r for r, auth in routes.items() if auth == "NONE"} == PUBLIC_ROUTES
    assert all(auth is None for r, auth in routes.items() if r not in PUBLIC_ROUTES)


def test_http_api_requires_a_jwt_and_is_throttled_and_logged(template: dict[str, Any]) -> None:
    api = props(template, "HttpApi")
    auth = api["Auth"]
    jwt = auth["Authorizers"][auth["DefaultAuthorizer"]]
    assert jwt["IdentitySource"] == "$request.header.Authorization"
    assert set(jwt["JwtConfiguration"]) == {"issuer", "audience"}
    assert api["DefaultRouteSettings"].keys() >= {"ThrottlingBurstLimit", "ThrottlingRateLimit"}
    assert getatt(api["AccessLogSettings"]["DestinationArn"]) == ("ApiAccessLogGroup", "Arn")
    fields = json.loads(re.sub(r"\$context\.[a-zA-Z.]+", "x", api["AccessLogSettings"]["Format"]))
    assert {"requestId", "routeKey", "status", "sub"} <= set(fields)
    assert "AllowOrigins" in api["CorsConfiguration"]
    client = props(template, "UserPoolClient")
    assert "custom:tenant" in client["ReadAttributes"] and "custom:tenant" not in client["WriteAttributes"]
    (tenant,) = (a for a in props(template, "UserPool")["Schema"] if a["Name"] == "tenant")
    assert tenant["Mutable"] is False


def test_environment_names_come_from_pixdex_constants(template: dict[str, Any]) -> None:
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    for name in (
        constants.ORIGINALS_BUCKET, constants.DERIVATIVES_BUCKET, constants.INDEX_URL, constants.INDEX_NAME,
        constants.MODEL_DIR, constants.DATA_DIR, constants.MULTI_TENANT, constants.TENANT_CLAIM,
    ):  # fmt: skip
        assert name in env, name
    assert env[constants.ORIGINALS_BUCKET] == {"Fn::Sub": ORIGINALS}
    assert env[constants.DERIVATIVES_BUCKET] == {"Fn::Sub": DERIVATIVES}
    assert env[constants.MODEL_DIR] == "/opt/models"
    assert str(env[constants.DATA_DIR]).startswith("/tmp/")  # the only writable path on Lambda
    assert {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"} <= set(env)
    known = {v for k, v in vars(constants).items() if k.isupper() and isinstance(v, str)}
    used = {
        key
        for node in itertools.chain(walk(template["Resources"]), walk(template["Globals"]))
        if isinstance(node, dict)
        for key in ([node["Name"]] if isinstance(node.get("Name"), str) else list(node))
        if isinstance(key, str) and key.startswith("PIXDEX_")
    }
    assert used <= known, used - known


# ---------------------------------------------------------------- data protection


@pytest.mark.parametrize("bucket", ["OriginalsBucket", "DerivativesBucket"])
def test_buckets_are_private_encrypted_versioned_and_tls_only(template: dict[str, Any], bucket: str) -> None:
    p = props(template, bucket)
    assert p["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ["BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"], True
    )
    (rule,) = p["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    default = rule["ServerSideEncryptionByDefault"]
    assert set(variants(default["SSEAlgorithm"])) == {"aws:kms", "AES256"}
    assert list(variants(default["KMSMasterKeyID"])) == [{"Fn::GetAtt": ["DataKey", "Arn"]}]
    assert p["VersioningConfiguration"] == {"Status": "Enabled"}
    assert any("NoncurrentVersionExpiration" in r for r in p["LifecycleConfiguration"]["Rules"])
    assert p["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    name = ORIGINALS if bucket == "OriginalsBucket" else DERIVATIVES
    (policy,) = (x["Properties"] for x in of_type(template, "AWS::S3::BucketPolicy").values()
                 if x["Properties"]["Bucket"] == {"Ref": bucket})  # fmt: skip
    denies = [s for s in statements(policy["PolicyDocument"]) if s["Effect"] == "Deny"]
    tls = [s for s in denies if s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}]
    assert len(tls) == 1 and tls[0]["Principal"] == "*" and tls[0]["Action"] == "s3:*"
    arn = f"arn:${{AWS::Partition}}:s3:::{name}"
    assert sorted(sub_strings(tls[0]["Resource"])) == [arn, f"{arn}/*"]


def test_kms_key_rotates_and_survives_the_stack(template: dict[str, Any]) -> None:
    key = template["Resources"]["DataKey"]
    assert key["Properties"]["EnableKeyRotation"] is True
    assert key["DeletionPolicy"] == key["UpdateReplacePolicy"] == "Retain"
    assert template["Resources"]["OriginalsBucket"]["DeletionPolicy"] == "Retain"


def test_index_is_encrypted_and_uses_fine_grained_access(template: dict[str, Any]) -> None:
    domain = props(template, "IndexDomain")
    assert domain["EncryptionAtRestOptions"]["Enabled"] is True
    assert domain["NodeToNodeEncryptionOptions"] == {"Enabled": True}
    assert domain["DomainEndpointOptions"]["EnforceHTTPS"] is True
    assert domain["DomainEndpointOptions"]["TLSSecurityPolicy"].startswith("Policy-Min-TLS-1-2")
    security = domain["AdvancedSecurityOptions"]
    assert security["Enabled"] is True and security["InternalUserDatabaseEnabled"] is False
    assert getatt(security["MasterUserOptions"]["MasterUserARN"]) == ("IndexAdminRole", "Arn")
    mapped = props(template, "IndexSecurity")["Roles"]
    writers = [getatt(v)[0] for x in mapped["pixdex_writer"]["backend_roles"] for v in variants(x)]
    assert writers == ["CompressFunctionRole", "AnalyzeFunctionRole", "RemoveFunctionRole", "HeavyJobRole"]
    assert [getatt(x)[0] for x in mapped["pixdex_query"]["backend_roles"]] == ["QueryFunctionRole"]
    # Serverless: the encryption policy names the stack's key when there is one (moto, like a
    # careless policy, trips over AWSOwnedKey without KmsARN), and the collection waits for it.
    encryption = sub_strings(props(template, "IndexEncryptionPolicy")["Policy"])
    policies = [json.loads(re.sub(r"\$\{[^}]+\}", "X", s)) for s in encryption]
    assert {(p["AWSOwnedKey"], "KmsARN" in p) for p in policies} == {(False, True), (True, False)}
    assert "IndexEncryptionPolicy" in template["Resources"]["IndexCollection"]["DependsOn"]


# ---------------------------------------------------------------- functions and IAM


def test_every_function_is_bounded_traced_and_on_python312(template: dict[str, Any], package_size: ModuleType) -> None:
    log_groups = [x["Properties"] for x in of_type(template, "AWS::Logs::LogGroup").values()]
    for name, fn in functions(template).items():
        if fn["Properties"].get("PackageType") == "Image":
            dockerfile = (REPO / fn["Metadata"]["Dockerfile"]).read_text(encoding="utf-8")
            froms = [i.value for i in package_size.parse_dockerfile(dockerfile) if i.keyword == "FROM"]
            assert froms == [LAMBDA_BASE], name
        else:
            assert effective(template, fn, "Runtime") == "python3.12", name
        assert isinstance(effective(template, fn, "ReservedConcurrentExecutions"), int | dict), name
        assert effective(template, fn, "MemorySize") and effective(template, fn, "Timeout"), name
        assert effective(template, fn, "Tracing") == "Active", name
        role, _ = getatt(fn["Properties"]["Role"])
        assert template["Resources"][role]["Type"] == "AWS::IAM::Role", name
        group = [g for g in log_groups if g["LogGroupName"] == {"Fn::Sub": f"/aws/lambda/${{{name}}}"}]
        assert len(group) == 1 and "RetentionInDays" in group[0], name
        # The role may write only to that log group, whose name is the function's name.
        function_name = fn["Properties"]["FunctionName"]["Fn::Sub"]
        log_statements = [
            s for _, doc in role_documents(template) for s in statements(doc)
            if _ == role and "logs:PutLogEvents" in as_list(s["Action"])
        ]  # fmt: skip
        assert [sub_strings(s["Resource"]) for s in log_statements] == [
            [
                f"arn:${{AWS::Partition}}:logs:${{AWS::Region}}:${{AWS::AccountId}}:log-group:/aws/lambda/{function_name}:*"
            ]
        ]


def test_iam_has_no_wildcards_beyond_what_services_require(template: dict[str, Any]) -> None:
    for role, document in role_documents(template):
        for s in statements(document):
            if s["Effect"] != "Allow":
                continue
            actions = as_list(s["Action"])
            assert not any(a == "*" or a.endswith(":*") for a in actions), (role, actions)
            if "*" in as_list(s["Resource"]):
                assert set(actions) <= STAR_RESOURCE_ACTIONS, (role, actions)
    for name, resource in of_type(template, "AWS::IAM::Role").items():
        arns = {a["Fn::Sub"] for a in resource["Properties"].get("ManagedPolicyArns", [])}
        assert arns == MANAGED_POLICIES.get(name, set()), name


def test_policies_name_buckets_by_sub_never_by_reference(template: dict[str, Any]) -> None:
    buckets = set(of_type(template, "AWS::S3::Bucket"))
    for role, document in role_documents(template):
        for node in walk(document):
            if isinstance(node, dict):
                assert node.get("Ref") not in buckets, role
                assert not ("Fn::GetAtt" in node and node["Fn::GetAtt"][0] in buckets), role
        for text in sub_strings(document):
            if ":s3:::" in text:
                bucket = text.split(":s3:::", 1)[1].split("/", 1)[0]
                assert bucket in (ORIGINALS, DERIVATIVES), (role, text)


def test_only_the_pipeline_writes_derivatives_and_only_query_deletes_originals(template: dict[str, Any]) -> None:
    def grants(action: str, bucket: str) -> set[str]:
        out = set()
        for role, document in role_documents(template):
            for s in statements(document):
                resources = sub_strings(s["Resource"])
                if action in as_list(s["Action"]) and f"arn:${{AWS::Partition}}:s3:::{bucket}/*" in resources:
                    out.add(role)
        return out

    assert grants("s3:PutObject", DERIVATIVES) == {"CompressFunctionRole", "HeavyJobRole"}
    assert grants("s3:DeleteObject", DERIVATIVES) == {"RemoveFunctionRole"}
    assert grants("s3:PutObject", ORIGINALS) == {"QueryFunctionRole"}
    assert grants("s3:DeleteObject", ORIGINALS) == {"QueryFunctionRole"}


# ---------------------------------------------------------------- alarms


def test_alarms_watch_every_dead_letter_queue_and_function(template: dict[str, Any]) -> None:
    alarms = [x["Properties"] for x in of_type(template, "AWS::CloudWatch::Alarm").values()]

    def watched(namespace: str, metric: str) -> set[str]:
        out = set()
        for a in alarms:
            if (a["Namespace"], a["MetricName"]) == (namespace, metric):
                (dimension,) = [d["Value"] for d in a["Dimensions"]][:1]
                out.add(getatt(dimension)[0] if "Fn::GetAtt" in dimension else dimension.get("Ref"))
        return out

    dlqs = {q for q in of_type(template, "AWS::SQS::Queue") if q.endswith("DeadLetterQueue")}
    assert watched("AWS/SQS", "ApproximateNumberOfMessagesVisible") == dlqs
    pipeline = {*PIPELINE, "QueryFunction"}
    assert watched("AWS/Lambda", "Errors") == pipeline
    assert watched("AWS/Lambda", "Throttles") == pipeline
    assert any(a["MetricName"] == "IndexErrors" for a in alarms)
    assert all(a["AlarmActions"] == [{"Ref": "AlarmTopic"}] for a in alarms)


# ---------------------------------------------------------------- layers, packaging, samconfig


def test_zip_functions_get_pyproject_dependencies_through_their_layers(
    template: dict[str, Any], package_size: ModuleType
) -> None:
    core = template["Resources"]["CoreLayer"]
    assert core["Properties"]["ContentUri"] == "layers/core/"
    assert core["Metadata"]["BuildMethod"] == "python3.12"
    # The images carry the models and their runtimes: no layer does any more.
    assert set(of_type(template, "AWS::Serverless::LayerVersion")) == {"DepsLayer", "CoreLayer"}
    fns, layers, images = package_size.load_project(REPO / "template.yaml")
    assert set(fns) == ZIP_FUNCTIONS
    assert {i.name for i in images} == {*IMAGE_FUNCTIONS, package_size.HEAVY_NAME}
    assert package_size.check_against_pyproject(fns, layers) == []
    for name in ZIP_FUNCTIONS:
        provided = {r.name for lid in fns[name].layers for r in layers[lid].requirements}
        assert "onnxruntime" not in provided, name


def test_package_check_catches_drift_from_pyproject(tmp_path: Path, package_size: ModuleType) -> None:
    fns, layers, _ = package_size.load_project(REPO / "template.yaml")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    deps = list(project["project"]["dependencies"])
    numpy = next(i for i, d in enumerate(deps) if d.startswith("numpy"))
    deps[numpy] = "numpy>=1.0"
    left_out = sorted(layers["DepsLayer"].left_out)
    deps = [d for d in deps if not d.startswith(left_out[0])]
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        "[project]\nname = 'pixdex'\n"
        f"dependencies = {json.dumps([*deps, 'zstandard>=0.20'])}\n"
        f"[project.optional-dependencies]\ncompress = ['{left_out[1]}>=0']\n",
        encoding="utf-8",
    )
    layers["DepsLayer"].requirements.append(package_size.Requirement("six>=1"))
    problems = package_size.check_against_pyproject(fns, layers, pyproject)
    for name in ZIP_FUNCTIONS:
        assert f"{name}: zstandard>=0.20 (pyproject) is in none of its layers" in problems
        assert any(p.startswith(f"{name}: layers pin numpy") and "numpy>=1.0" in p for p in problems)
        assert f"{name}: layers install six>=1, which pyproject does not list" in problems
        assert f"{name}: a layer leaves out {left_out[0]}, which pyproject does not list" in problems
    # Left-out covers the shared dependencies only, never the function's own extra.
    assert [p for p in problems if f"{left_out[1]}>=0" in p] == [
        f"CompressFunction: {left_out[1]}>=0 (pyproject) is in none of its layers"
    ]


def test_model_functions_are_images_of_their_own_dockerfile(
    template: dict[str, Any], package_size: ModuleType, tmp_path: Path
) -> None:
    _, _, images = package_size.load_project(REPO / "template.yaml")
    for name in IMAGE_FUNCTIONS:
        resource = template["Resources"][name]
        p = resource["Properties"]
        folder = f"functions/{name.removesuffix('Function').lower()}"
        assert resource["Metadata"]["Dockerfile"] == f"{folder}/Dockerfile"
        assert resource["Metadata"]["DockerContext"] == "."
        assert p["PackageType"] == "Image" and p["ImageConfig"]["Command"] == ["app.lambda_handler"]
        assert not {"CodeUri", "Handler", "Runtime", "Layers"} & set(p), name
        # The COPY lines run for real against the build context (.dockerignore applied); RUN lines are
        # parsed and checked without installing anything.
        (spec,) = [s for s in images if s.name == name]
        replay = package_size.ImageReplay(spec, "x86_64", package_size.Cache(tmp_path), install=False)
        result = replay.run()
        files = result.fs.visible
        assert files["/var/task/app.py"].host == REPO / folder / "app.py"
        assert result.cmd == ["app.lambda_handler"]
        models = {path.rsplit("/", 1)[1] for path in files if path.startswith("/opt/models/")}
        assert models == {f.name for f in (REPO / "layers" / "models").iterdir() if f.name != "README.md"}
        assert (
            result.env["PIXDEX_MODEL_DIR"]
            == template["Globals"]["Function"]["Environment"]["Variables"]["PIXDEX_MODEL_DIR"]
        )
        # The project's sources were copied for pip and removed again (only hidden: they still ship).
        assert not any(path.startswith("/tmp/") for path in files)
        shipped = {path for path, _ in result.fs.shipped()}
        assert "/tmp/pixdex-src/pyproject.toml" in shipped
        assert not any("__pycache__" in path or path.endswith(".pyc") for path in shipped)
        (pip,) = replay.pip_commands
        assert (pip.target, pip.local) == ("/var/task", [("/tmp/pixdex-src", ["faces"])])
        assert ":all:" in pip.only_binary and pip.no_binary == {"face-recognition-models"}
    # The two images differ only in whose handler they carry.
    analyze = (REPO / "functions/analyze/Dockerfile").read_text(encoding="utf-8")
    query = (REPO / "functions/query/Dockerfile").read_text(encoding="utf-8")
    swapped = re.sub(r"analyze|query|Analyze|Query", lambda m: {"analyze": "query", "query": "analyze",
                     "Analyze": "Query", "Query": "Analyze"}[m.group(0)], analyze)  # fmt: skip
    assert swapped == query


def test_dockerfiles_delete_the_noncommercial_face_model_where_they_install_it(package_size: ModuleType) -> None:
    for dockerfile in ("functions/analyze/Dockerfile", "functions/query/Dockerfile", "functions/heavy/Dockerfile"):
        runs = [
            i.value
            for i in package_size.parse_dockerfile((REPO / dockerfile).read_text(encoding="utf-8"))
            if i.keyword == "RUN" and "pip install" in i.value
        ]
        installs = [r for r in runs if "PIXDEX_EXTRAS" in r]
        assert len(installs) == 1, dockerfile
        # A later RUN could only hide the file; it must go in the layer that installs it.
        assert re.search(
            r"rm -f \S*/face_recognition_models/models/shape_predictor_68_face_landmarks\.dat", installs[0]
        )


def test_gpu_task_image_is_what_the_batch_job_runs(
    template: dict[str, Any], package_size: ModuleType, tmp_path: Path
) -> None:
    from pixdex.jobs import heavy_command

    job = props(template, "HeavyJobDefinition")["ContainerProperties"]
    assert job["Image"] == {"Fn::Sub": "${HeavyRepository.RepositoryUri}:${HeavyImageTag}"}
    assert {"Type": "GPU", "Value": "1"} in job["ResourceRequirements"]
    assert "Command" not in job  # the image's CMD, or the command pixdex.jobs submits
    assert template["Resources"]["HeavyRepository"]["Type"] == "AWS::ECR::Repository"
    spec = package_size.ImageSpec(package_size.HEAVY_NAME, REPO / package_size.HEAVY_DOCKERFILE, REPO, ("x86_64",))
    replay = package_size.ImageReplay(spec, "x86_64", package_size.Cache(tmp_path), install=False)
    result = replay.run()
    assert result.base_ref.startswith("nvidia/cuda:") and "cudnn-runtime" in result.base_ref
    # Batch replaces CMD with pixdex.jobs' command line: both must start the same program.
    assert result.cmd == heavy_command(bucket="b")[: len(result.cmd)]
    assert result.env["PYTHONPATH"] == "/opt/pixdex" and "python-is-python3" in result.apt_packages
    first, gpu = replay.pip_commands
    assert first.local == [("/tmp/pixdex-src", ["faces"])]
    assert gpu.no_deps and [r.split("==")[0] for r in gpu.requirements] == ["onnxruntime-gpu"]


def test_analyze_routes_large_images_to_the_gpu_job_only(template: dict[str, Any]) -> None:
    env = props(template, "AnalyzeFunction")["Environment"]["Variables"]
    assert env["PIXDEX_GPU_PIXEL_THRESHOLD"] == {"Ref": "GpuPixelThreshold"}
    assert env["PIXDEX_BATCH_JOB_QUEUE"] == {"Fn::If": ["CreateGpuTask", {"Ref": "GpuJobQueue"}, ""]}
    assert env["PIXDEX_BATCH_JOB_DEFINITION"] == {"Fn::If": ["CreateGpuTask", {"Ref": "HeavyJobDefinition"}, ""]}
    queue = props(template, "GpuJobQueue")["JobQueueName"]["Fn::Sub"]
    definition = props(template, "HeavyJobDefinition")["JobDefinitionName"]["Fn::Sub"]
    submits = {
        role: sorted(r for s in statements(doc) if "batch:SubmitJob" in as_list(s["Action"]) for r in sub_strings(s))
        for role, doc in role_documents(template)
    }
    prefix = "arn:${AWS::Partition}:batch:${AWS::Region}:${AWS::AccountId}"
    assert {role: arns for role, arns in submits.items() if arns} == {
        "AnalyzeFunctionRole": sorted(
            [
                f"{prefix}:job-queue/{queue}",
                f"{prefix}:job-definition/{definition}",
                f"{prefix}:job-definition/{definition}:*",
            ]
        )
    }


def test_requirements_follow_includes_and_the_left_out_directive(tmp_path: Path, package_size: ModuleType) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "requirements.txt").write_text("# comment\nnumpy>=1.26  # why\n", encoding="utf-8")
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "requirements.txt").write_text(
        "# package-size: leaves out Big_Runtime other-one (only images need them)\n"
        "-r ../base/requirements.txt\nonnxruntime\n"
    )
    reqs, text = package_size.read_requirements(tmp_path / "more" / "requirements.txt")
    assert [str(r) for r in reqs] == ["numpy>=1.26", "onnxruntime"]
    assert text == "numpy>=1.26\nonnxruntime"
    assert package_size.read_left_out(tmp_path / "more" / "requirements.txt") == {"big-runtime", "other-one"}


def test_samconfig_lets_validate_run_offline_and_deploy_with_iam() -> None:
    config = tomllib.loads((REPO / "samconfig.toml").read_text(encoding="utf-8"))
    assert config["default"]["global"]["parameters"]["region"] == "us-east-1"
    assert config["default"]["validate"]["parameters"]["lint"] is True
    deploy = config["default"]["deploy"]["parameters"]
    assert set(deploy["capabilities"].split()) == {"CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"}
    assert deploy["resolve_s3"] is True
    # The image functions' ECR repositories: without them `sam deploy` stops and asks.
    assert deploy["resolve_image_repos"] is True


# ---------------------------------------------------------------- the inline custom resource


class _Recorder(BaseHTTPRequestHandler):
    """Stands in for OpenSearch's security API and for CloudFormation's response URL."""

    calls: list[tuple[str, str, dict[str, str], Any]]
    answer: Callable[[str, str, int], int]

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        self.calls.append((self.command, self.path, dict(self.headers.items()), body))
        attempt = sum(1 for c in self.calls if c[:2] == (self.command, self.path))
        status = 200 if self.path.startswith("/cfn-response") else self.answer(self.command, self.path, attempt)
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_GET(self) -> None:  # http.server dispatches on this name
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _resolve(value: Any) -> Any:
    """What CloudFormation hands the custom resource: intrinsics resolved (GPU task on)."""
    if isinstance(value, dict):
        if set(value) == {"Fn::GetAtt"}:
            return f"arn:aws:iam::123456789012:role/{value['Fn::GetAtt'][0]}"
        if set(value) == {"Fn::Sub"}:
            return value["Fn::Sub"].replace("${IndexName}", "pixdex-images")
        if set(value) == {"Fn::If"}:
            return _resolve(value["Fn::If"][1])
        return {k: _resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v) for v in value]
    return value


@pytest.fixture
def security_api(
    template: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, Callable[[str, str, int], int]], tuple[str, list[Any]]]]:
    code = props(template, "IndexSecurityFunction")["InlineCode"]
    (tmp_path / "index.py").write_text(code, encoding="utf-8")
    module = _load_script("index_security_inline", tmp_path / "index.py")
    for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    servers: list[ThreadingHTTPServer] = []

    def run(request_type: str, answer: Callable[[str, str, int], int]) -> tuple[str, list[Any]]:
        calls: list[Any] = []
        handler = type("Handler", (_Recorder,), {"calls": calls, "answer": staticmethod(answer)})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        properties = _resolve(props(template, "IndexSecurity")) | {"Endpoint": base, "RetryDelaySeconds": "0"}
        event = {
            "RequestType": request_type, "ResponseURL": f"{base}/cfn-response?X-Amz-Signature=abc",
            "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/pixdex/1", "RequestId": "r-1",
            "LogicalResourceId": "IndexSecurity", "ResourceProperties": properties,
        }  # fmt: skip
        status = module.handler(event, None)
        return status, calls

    yield run
    for server in servers:
        server.shutdown()
        server.server_close()


def test_custom_resource_maps_roles_through_the_signed_security_api(security_api: Any) -> None:
    status, calls = security_api("Create", lambda method, path, attempt: 200)
    assert status == "SUCCESS"
    api = [(m, p, b) for m, p, _, b in calls if not p.startswith("/cfn-response")]
    prefix = "/_plugins/_security/api/"
    assert [(m, p) for m, p, _ in api] == [
        ("PUT", f"{prefix}roles/pixdex_writer"), ("PUT", f"{prefix}rolesmapping/pixdex_writer"),
        ("PUT", f"{prefix}roles/pixdex_query"), ("PUT", f"{prefix}rolesmapping/pixdex_query"),
    ]  # fmt: skip
    writer_role, writer_mapping, query_role, query_mapping = (b for _, _, b in api)
    assert "backend_roles" not in writer_role
    assert writer_role["index_permissions"][0]["index_patterns"] == ["pixdex-images*"]
    assert "delete" not in writer_role["index_permissions"][0]["allowed_actions"]  # crud covers it
    assert writer_mapping == {
        "backend_roles": [
            f"arn:aws:iam::123456789012:role/{r}"
            for r in ("CompressFunctionRole", "AnalyzeFunctionRole", "RemoveFunctionRole", "HeavyJobRole")
        ]
    }
    assert "crud" not in query_role["index_permissions"][0]["allowed_actions"]
    assert query_mapping == {"backend_roles": ["arn:aws:iam::123456789012:role/QueryFunctionRole"]}
    for _, path, headers, _ in calls:
        if path.startswith("/cfn-response"):
            continue
        auth = headers["Authorization"]
        assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
        assert "/us-east-1/es/aws4_request" in auth and "SignedHeaders=" in auth and "x-amz-date" in auth
    (response,) = [c for c in calls if c[1].startswith("/cfn-response")]
    method, _, headers, body = response
    assert method == "PUT" and headers.get("Content-Type") == ""  # the presigned URL signs no type
    assert body["Status"] == "SUCCESS" and body["LogicalResourceId"] == "IndexSecurity"
    assert body["RequestId"] == "r-1" and body["PhysicalResourceId"].startswith("index-security-")


def test_custom_resource_fails_fast_on_refusal_and_retries_server_errors(security_api: Any) -> None:
    status, calls = security_api("Create", lambda method, path, attempt: 403)
    assert status == "FAILED"
    assert sum(1 for c in calls if "/roles/" in c[1]) == 1  # a refusal is not retried
    assert calls[-1][3]["Status"] == "FAILED" and "403" in calls[-1][3]["Reason"]

    # The security plugin of a fresh domain answers 503 for a while: only the first call fails here.
    first = "/_plugins/_security/api/roles/pixdex_writer"
    status, calls = security_api("Update", lambda method, path, attempt: 503 if (path, attempt) == (first, 1) else 200)
    assert status == "SUCCESS"
    assert [c[1] for c in calls].count(first) == 2
    assert calls[-1][3]["Status"] == "SUCCESS"


def test_custom_resource_delete_never_blocks_the_stack(security_api: Any) -> None:
    status, calls = security_api("Delete", lambda method, path, attempt: 404)
    assert status == "SUCCESS"
    assert {(m, p.rsplit("/", 2)[-2]) for m, p, _, _ in calls if m == "DELETE"} == {
        ("DELETE", "roles"),
        ("DELETE", "rolesmapping"),
    }
    status, calls = security_api("Delete", lambda method, path, attempt: 500)
    assert status == "SUCCESS"
    assert sum(1 for c in calls if c[0] == "DELETE") == 1  # one try, then let the stack go


# ---------------------------------------------------------------- web page


def test_site_bucket_is_private_and_read_only_by_its_distribution(template: dict[str, Any]) -> None:
    p = props(template, "SiteBucket")
    assert p["PublicAccessBlockConfiguration"] == dict.fromkeys(
        ["BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"], True
    )
    assert p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"}
    (policy,) = (x["Properties"] for x in of_type(template, "AWS::S3::BucketPolicy").values()
                 if x["Properties"]["Bucket"] == {"Ref": "SiteBucket"})  # fmt: skip
    allows = [s for s in statements(policy["PolicyDocument"]) if s["Effect"] == "Allow"]
    assert len(allows) == 1 and allows[0]["Principal"] == {"Service": "cloudfront.amazonaws.com"}
    assert allows[0]["Action"] == "s3:GetObject"
    source = allows[0]["Condition"]["StringEquals"]["AWS:SourceArn"]
    assert "distribution/${SiteDistribution}" in source["Fn::Sub"]
    assert any(s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
               for s in statements(policy["PolicyDocument"]) if s["Effect"] == "Deny")


def test_distribution_serves_the_site_over_https_with_config_from_a_function(template: dict[str, Any]) -> None:
    config = props(template, "SiteDistribution")["DistributionConfig"]
    (origin,) = config["Origins"]
    assert origin["OriginAccessControlId"] == {"Fn::GetAtt": ["SiteOriginAccessControl", "Id"]}
    behaviours = [config["DefaultCacheBehavior"], *config["CacheBehaviors"]]
    assert all(b["ViewerProtocolPolicy"] == "redirect-to-https" for b in behaviours)
    assert all(b["ResponseHeadersPolicyId"] == {"Ref": "SiteHeadersPolicy"} for b in behaviours)
    (cfg,) = [b for b in config["CacheBehaviors"] if b["PathPattern"] == "/config.json"]
    (assoc,) = cfg["FunctionAssociations"]
    assert assoc["EventType"] == "viewer-request"
    code, names = props(template, "SiteConfigFunction")["FunctionCode"]["Fn::Sub"]
    # The page's config: the API this stack deploys and the Cognito client it creates (or a pasted token).
    assert "${HttpApi}.execute-api" in code and "${Auth}" in code
    cognito, token = names["Auth"]["Fn::If"][1:]
    assert "${UserPoolClient}" in cognito["Fn::Sub"] and "token" in token
    # The page signs in with a plain fetch to Cognito: the client must allow that flow.
    assert "ALLOW_USER_PASSWORD_AUTH" in props(template, "UserPoolClient")["ExplicitAuthFlows"]
    csp = props(template, "SiteHeadersPolicy")["ResponseHeadersPolicyConfig"]["SecurityHeadersConfig"][
        "ContentSecurityPolicy"]["ContentSecurityPolicy"]["Fn::Sub"]
    assert "script-src 'self'" in csp and "cognito-idp" in csp
    # No wildcard host: only the API, Cognito and the two buckets, by name.
    assert "*" not in csp
    img = next(d for d in csp.split(";") if d.strip().startswith("img-src"))
    connect = next(d for d in csp.split(";") if d.strip().startswith("connect-src"))
    assert "https://${DerivativesBucket}.s3.${AWS::URLSuffix}" in img.split()
    assert "https://${OriginalsBucket}.s3.${AWS::URLSuffix}" in connect.split()
    assert "DerivativesBucket" not in connect


def test_originals_bucket_lets_the_page_upload(template: dict[str, Any]) -> None:
    (rule,) = props(template, "OriginalsBucket")["CorsConfiguration"]["CorsRules"]
    assert "POST" in rule["AllowedMethods"] and rule["AllowedOrigins"] == {"Ref": "CorsAllowOrigins"}
