"""The local stack derives its buckets, queues, rules and function wiring from template.yaml."""

from __future__ import annotations

from pathlib import Path

from pixdex.local.gateway import Route
from pixdex.local.template import read_stack

REPO = Path(__file__).resolve().parents[2]

TINY = """
Parameters:
  Prefix: {Type: String, Default: demo}
  Mode: {Type: String, Default: a}
Conditions:
  IsA: !Equals [!Ref Mode, a]
Resources:
  Bucket:
    Type: AWS::S3::Bucket
    Properties:
      BucketName: !Sub "${Prefix}-bucket-${AWS::AccountId}"
      NotificationConfiguration: {EventBridgeConfiguration: {EventBridgeEnabled: true}}
  Dlq: {Type: AWS::SQS::Queue}
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Join ["-", [!Ref Prefix, work]]
      VisibilityTimeout: !If [IsA, 60, 90]
      RedrivePolicy: {deadLetterTargetArn: !GetAtt Dlq.Arn, maxReceiveCount: 4}
  Rule:
    Type: AWS::Events::Rule
    Properties:
      EventPattern: {source: [aws.s3], detail: {bucket: {name: [!Sub "${Prefix}-bucket-${AWS::AccountId}"]}}}
      Targets: [{Id: q, Arn: !GetAtt Queue.Arn}]
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/work/
      Handler: app.lambda_handler
      Events:
        Sqs: {Type: SQS, Properties: {Queue: !GetAtt Queue.Arn, BatchSize: 3}}
        Api: {Type: HttpApi, Properties: {Method: get, Path: "/things/{id}"}}
  Img:
    Type: AWS::Serverless::Function
    Metadata: {Dockerfile: functions/heavyish/Dockerfile, DockerContext: .}
    Properties:
      PackageType: Image
      ImageConfig: {Command: ["main.handler"]}
"""


def test_intrinsics_are_resolved(tmp_path: Path) -> None:
    path = tmp_path / "template.yaml"
    path.write_text(TINY)
    spec = read_stack(path, stack_name="s", parameters={"Mode": "b"})
    assert spec.buckets == {"Bucket": "demo-bucket-123456789012"}
    assert spec.eventbridge_buckets == ("Bucket",)
    q = spec.queues["Queue"]
    assert (q.name, q.dead_letter, q.max_receive_count, q.visibility_timeout) == ("demo-work", "Dlq", 4, 90)
    assert spec.queues["Dlq"].name == "s-Dlq"
    assert spec.rules["Rule"].pattern["detail"]["bucket"]["name"] == ["demo-bucket-123456789012"]
    assert spec.rules["Rule"].target_queues == ("Queue",)
    fn = spec.functions["work"]
    assert (fn.queue, fn.batch_size, fn.routes) == ("Queue", 3, (("GET", "/things/{id}"),))
    assert fn.code_uri == tmp_path / "functions/work"
    img = spec.functions["heavyish"]
    assert (img.code_uri, img.handler, img.queue) == (tmp_path / "functions/heavyish", "main.handler", None)


def test_project_template_wires_every_function() -> None:
    spec = read_stack(REPO / "template.yaml", parameters={"NamePrefix": "pixdex-local"})
    assert spec.buckets["OriginalsBucket"] == "pixdex-local-originals-123456789012-us-east-1"
    assert spec.eventbridge_buckets == ("OriginalsBucket",)
    for name, queue in (("compress", "CompressQueue"), ("analyze", "AnalyzeQueue"), ("remove", "RemoveQueue")):
        fn = spec.functions[name]
        assert fn.queue == queue
        assert (fn.code_uri / "app.py").is_file()
        assert spec.queues[queue].dead_letter == f"{queue[:-5]}DeadLetterQueue"
    created = [r for r in spec.rules.values() if r.pattern.get("detail-type") == ["Object Created"]]
    assert sorted(q for r in created for q in r.target_queues) == ["AnalyzeQueue", "CompressQueue"]
    routes = set(spec.functions["query"].routes)
    assert {("GET", "/search"), ("GET", "/images/{id}"), ("GET", "/health"), ("GET", "/openapi.json")} <= routes


def test_gateway_routes_match_like_api_gateway() -> None:
    route = Route("GET", "/images/{id}/similar")
    assert route.match("GET", "/images/abc_-1/similar") == {"id": "abc_-1"}
    assert route.match("POST", "/images/abc/similar") is None
    assert route.match("GET", "/images/a/b/similar") is None
    assert Route("ANY", "/files/{path+}").match("DELETE", "/files/a/b%20c") == {"path": "a/b c"}


def test_bucket_cors_rules_come_from_the_template(tmp_path: Path) -> None:
    path = tmp_path / "template.yaml"
    path.write_text("""
Parameters:
  Origins: {Type: CommaDelimitedList, Default: "https://a.example, https://b.example"}
Resources:
  Up:
    Type: AWS::S3::Bucket
    Properties:
      BucketName: up
      CorsConfiguration:
        CorsRules:
          - {AllowedMethods: [POST], AllowedOrigins: !Ref Origins, AllowedHeaders: [content-type], MaxAge: 60}
  Plain: {Type: AWS::S3::Bucket, Properties: {BucketName: plain}}
""")
    spec = read_stack(path)
    assert spec.bucket_cors == {"Up": [{"AllowedMethods": ["POST"], "AllowedOrigins": [
        "https://a.example", "https://b.example"], "AllowedHeaders": ["content-type"], "MaxAgeSeconds": 60}]}


def test_the_real_template_lets_browsers_upload_and_read_locally() -> None:
    spec = read_stack(REPO / "template.yaml")
    (upload,) = spec.bucket_cors["OriginalsBucket"]
    assert "POST" in upload["AllowedMethods"] and upload["AllowedOrigins"] == ["*"]
    (read,) = spec.bucket_cors["DerivativesBucket"]
    assert "GET" in read["AllowedMethods"]
