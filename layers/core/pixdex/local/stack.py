"""`pixdex up`: moto on loopback, the template's buckets/rules/queues, pollers, the HTTP API, persistence."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from pixdex import constants as env_names
from pixdex.errors import PixdexError
from pixdex.local.functions import load_handler
from pixdex.local.gateway import Gateway
from pixdex.local.poller import QueuePoller
from pixdex.local.processes import stop_process
from pixdex.local.reconcile import ReconcileReport
from pixdex.local.template import StackSpec, read_stack
from pixdex.settings import Settings
from pixdex.site import StaticSite
from pixdex.storage import FolderStore

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

log = logging.getLogger("pixdex.local")

LOCAL_CREDENTIALS: dict[str, Any] = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
MIRROR_QUEUE = "pixdex-local-mirror"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_template(start: Path | None = None) -> Path:
    """template.yaml of the checkout we run from (the local stack needs the functions/ beside it)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "template.yaml").is_file() and (folder / "functions").is_dir():
            return folder / "template.yaml"
    pkg_root = Path(__file__).resolve().parents[4]
    if (pkg_root / "template.yaml").is_file():
        return pkg_root / "template.yaml"
    raise FileNotFoundError("template.yaml not found: run pixdex from the project checkout or pass --template")


# What the local stack decides itself: its own buckets and state folder.
STACK_OWNED_SETTINGS = frozenset({env_names.ORIGINALS_BUCKET, env_names.DERIVATIVES_BUCKET, env_names.DATA_DIR})


def inherited_settings(environ: Mapping[str, str], *, index_url_given: bool = False) -> dict[str, str]:
    """The PIXDEX_* settings of the environment `pixdex up` was started in, for its functions (e.g.
    PIXDEX_INDEX_UPDATE_MODE=merge for a cluster without scripting). Without this the functions would see
    only the defaults, since the stack writes every setting's default into their environment."""
    skip = STACK_OWNED_SETTINGS | ({env_names.INDEX_URL} if index_url_given else frozenset())
    return {k: v for k, v in environ.items() if k.startswith("PIXDEX_") and k not in skip}


@dataclass
class UpOptions:
    data_dir: Path
    api_port: int = 8000
    aws_port: int = 4566
    template: Path | None = None
    region: str = "us-east-1"
    max_receive_count: int | None = None   # overrides the template's MaxReceiveCount parameter
    index_url: str | None = None           # a search cluster instead of DATA/index.db
    extra_env: dict[str, str] = field(default_factory=dict)


class MotoServer:
    """moto in server mode, in its own process so its work does not share a GIL with the handlers."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Without moto's allow-everything CORS, browsers meet the buckets' own CORS rules, as in AWS.
        env = {**os.environ, "MOTO_DISABLE_GLOBAL_CORS": "true"}
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pixdex.local.moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited early; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class ObjectMirror:
    """Keeps a copy of every bucket object under data/s3 so the stack's state survives restarts.

    moto keeps objects in memory only; a local-only rule sends every object event of the stack's buckets to a
    mirror queue, and this worker writes or deletes the file. The layout is FolderStore's, so the same
    folder also serves `pixdex ingest --in-process`."""

    def __init__(self, root: Path, s3: S3Client) -> None:
        self.files = FolderStore(root)
        self.s3 = s3

    def restore(self, bucket: str) -> int:
        keys = self.files.list_keys(bucket)
        for key in keys:
            data, head = self.files.get(bucket, key)
            self.s3.put_object(Bucket=bucket, Key=key, Body=data,
                               ContentType=head.content_type or "binary/octet-stream")
        return len(keys)

    def written_at(self, bucket: str, key: str) -> str | None:
        head = self.files.head(bucket, key)
        return head.last_modified if head is not None else None

    def sync(self, bucket: str) -> None:
        """Make data/s3 equal to the bucket: write what is missing or different, delete what is gone."""
        live: dict[str, str] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                live[obj["Key"]] = obj.get("ETag", "").strip('"')
        for key in set(self.files.list_keys(bucket)) - set(live):
            self.files.delete(bucket, key)
        for key, etag in live.items():
            head = self.files.head(bucket, key)
            if head is None or head.etag != etag:
                got = self.s3.get_object(Bucket=bucket, Key=key)
                self.files.put(bucket, key, got["Body"].read(),
                               content_type=got.get("ContentType") or "binary/octet-stream")

    def apply(self, body: str) -> None:
        event = json.loads(body)
        detail = event.get("detail") or {}
        bucket = (detail.get("bucket") or {}).get("name")
        key = (detail.get("object") or {}).get("key")
        if not bucket or not key:
            return
        try:
            obj = self.s3.get_object(Bucket=bucket, Key=key)
        except ClientError:
            self.files.delete(bucket, key)
            return
        self.files.put(bucket, key, obj["Body"].read(),
                       content_type=obj.get("ContentType") or "binary/octet-stream")


def function_environment(*, data_dir: Path, originals_bucket: str, derivatives_bucket: str, aws_endpoint: str,
                         region: str, index_url: str | None = None) -> dict[str, str]:
    """A function's environment against local parts (moto at ``aws_endpoint``, the index in ``data_dir``
    unless ``index_url``): what the local stack and the cold-start benchmark give their functions."""
    return {
        **Settings(data_dir=data_dir).to_env(),
        env_names.ORIGINALS_BUCKET: originals_bucket,
        env_names.DERIVATIVES_BUCKET: derivatives_bucket,
        env_names.INDEX_URL: index_url or f"sqlite:///{data_dir / 'index.db'}",
        env_names.AWS_ENDPOINT_URL: aws_endpoint,
        env_names.AWS_REGION: region,
        env_names.AWS_DEFAULT_REGION: region,
        "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
        "POWERTOOLS_METRICS_NAMESPACE": "pixdex",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }


class LocalStack:
    def __init__(self, options: UpOptions) -> None:
        self.options = options
        self.data_dir = options.data_dir.resolve()
        self.template = (options.template or find_template()).resolve()
        # Local names differ from a deployed stack's, so local state never looks like a real account's.
        params = {"NamePrefix": "pixdex-local"}
        if options.max_receive_count is not None:
            params["MaxReceiveCount"] = str(options.max_receive_count)
        self.spec: StackSpec = read_stack(self.template, region=options.region, parameters=params)
        self.moto = MotoServer(options.aws_port, self.data_dir / "logs" / "moto.log")
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.pollers: dict[str, QueuePoller] = {}
        self.gateway: Gateway | None = None
        self.queue_urls: dict[str, str] = {}
        self._mirror: ObjectMirror | None = None
        self.reconciled: ReconcileReport | None = None

    # -- names ---------------------------------------------------------------------------------

    @property
    def originals_bucket(self) -> str:
        return self.spec.buckets["OriginalsBucket"]

    @property
    def derivatives_bucket(self) -> str:
        return self.spec.buckets["DerivativesBucket"]

    @property
    def aws_endpoint(self) -> str:
        return self.moto.url

    @property
    def api_url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    def settings(self) -> Settings:
        env = self.environment()
        return Settings.from_env(env)

    def environment(self) -> dict[str, str]:
        """The functions' environment, as template.yaml would set it in AWS, pointed at the local parts."""
        env = function_environment(data_dir=self.data_dir, originals_bucket=self.originals_bucket,
                                   derivatives_bucket=self.derivatives_bucket, aws_endpoint=self.aws_endpoint,
                                   region=self.options.region, index_url=self.options.index_url)
        env.update(self.options.extra_env)
        return env

    def client(self, service: str) -> Any:
        # The stubs type each service name separately; this helper serves several.
        return boto3.client(  # type: ignore[call-overload]
            service, endpoint_url=self.aws_endpoint, region_name=self.options.region,
            config=Config(retries={"mode": "standard"}), **LOCAL_CREDENTIALS,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.moto.start()
        # The handlers build their clients from the environment at import, as in Lambda: this is the edge.
        os.environ.update(self.environment())
        s3, sqs, events = self.client("s3"), self.client("sqs"), self.client("events")
        mirror = ObjectMirror(self.data_dir / "s3", s3)
        self._provision(s3, sqs, events, mirror)
        # Only now may stop() sync the mirror: before the restore it would delete every object not yet
        # copied back into moto.
        self._mirror = mirror
        self._reconcile(s3, sqs, mirror)
        for name, fn in self.spec.functions.items():
            if fn.queue is None:
                continue
            queue = self.spec.queues[fn.queue]
            poller = QueuePoller(
                name=name, sqs=sqs, queue_url=self.queue_urls[fn.queue], queue_arn=queue.arn,
                handler=load_handler(fn), batch_size=fn.batch_size, region=self.options.region,
                stop=self.stop_event,
            )
            self.pollers[name] = poller
        self._start_mirror_worker(sqs, mirror)
        for p in self.pollers.values():
            p.start()
            self.threads.append(p)
        query = self.spec.functions["query"]
        self.gateway = Gateway("127.0.0.1", self.options.api_port, load_handler(query), query.routes,
                               site=StaticSite(connect_origins=(self.aws_endpoint,)))
        t = threading.Thread(target=self.gateway.serve_forever, name="gateway", daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        if self.gateway is not None:
            self.gateway.shutdown()
            self.gateway.server_close()
        for t in self.threads:
            t.join(timeout=10)
        if self._mirror is not None:
            # Events still waiting in the mirror queue die with moto: copy what they describe now.
            for bucket in self.spec.buckets.values():
                try:
                    self._mirror.sync(bucket)
                except Exception:
                    log.exception("final mirror sync of %s failed", bucket)
        self.moto.stop()

    def _reconcile(self, s3: S3Client, sqs: SQSClient, mirror: ObjectMirror) -> None:
        """Re-derive the work that was queued when the stack last stopped (see pixdex.local.reconcile)."""
        from pixdex.index import open_index
        from pixdex.local.reconcile import reconcile

        queues = {fn.name: self.queue_urls[fn.queue] for fn in self.spec.functions.values() if fn.queue}
        try:
            index = open_index(self.settings())
            try:
                self.reconciled = reconcile(s3, sqs, index, bucket=self.originals_bucket, queues=queues,
                                            written_at=lambda key: mirror.written_at(self.originals_bucket, key),
                                            region=self.options.region)
            finally:
                index.close()
        except PixdexError as exc:
            # An index that is down at start must not keep the stack down: new uploads are requeued until
            # it is back, and the next start reconciles.
            log.warning("start-up reconciliation skipped: %s", exc.message)
            return
        log.info("%s", self.reconciled.line())

    def _provision(self, s3: S3Client, sqs: SQSClient, events: Any, mirror: ObjectMirror) -> None:
        for lid, bucket in self.spec.buckets.items():
            s3.create_bucket(Bucket=bucket)
            if lid in self.spec.bucket_cors:
                rules: Any = self.spec.bucket_cors[lid]  # the S3 API's shape, built from the template
                s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": rules})
            mirror.restore(bucket)
            log.info("bucket %s (%s)", bucket, lid)
        # Notifications go on after the restore, so restored objects are not processed again.
        for bucket in self.spec.buckets.values():
            s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
            )
        # Dead-letter queues first: a redrive policy must name an existing queue.
        ordered = sorted(self.spec.queues.values(), key=lambda q: q.dead_letter is not None)
        for q in ordered:
            attrs: dict[Any, str] = {"VisibilityTimeout": str(q.visibility_timeout)}
            if q.dead_letter is not None:
                dlq = self.spec.queues[q.dead_letter]
                attrs["RedrivePolicy"] = json.dumps(
                    {"deadLetterTargetArn": dlq.arn, "maxReceiveCount": q.max_receive_count or 3}
                )
            self.queue_urls[q.logical_id] = sqs.create_queue(QueueName=q.name, Attributes=attrs)["QueueUrl"]
        for rule in self.spec.rules.values():
            events.put_rule(Name=rule.logical_id, EventPattern=json.dumps(rule.pattern), State="ENABLED")
            events.put_targets(Rule=rule.logical_id, Targets=[
                {"Id": f"t{i}", "Arn": self.spec.queues[q].arn} for i, q in enumerate(rule.target_queues)
            ])
        # Local only: every object event of the stack's buckets feeds the persistence mirror.
        mirror_url = sqs.create_queue(QueueName=MIRROR_QUEUE)["QueueUrl"]
        self.queue_urls[MIRROR_QUEUE] = mirror_url
        mirror_arn = sqs.get_queue_attributes(QueueUrl=mirror_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"]
        events.put_rule(Name="PixdexLocalMirror", State="ENABLED", EventPattern=json.dumps({
            "source": ["aws.s3"], "detail": {"bucket": {"name": sorted(self.spec.buckets.values())}},
        }))
        events.put_targets(Rule="PixdexLocalMirror", Targets=[{"Id": "mirror", "Arn": mirror_arn}])

    def _start_mirror_worker(self, sqs: SQSClient, mirror: ObjectMirror) -> None:
        url = self.queue_urls[MIRROR_QUEUE]

        def work() -> None:
            while not self.stop_event.is_set():
                try:
                    msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
                    for m in msgs.get("Messages", []):
                        mirror.apply(m["Body"])
                        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
                except Exception:
                    log.exception("mirror worker failed; retrying")
                    self.stop_event.wait(1)

        t = threading.Thread(target=work, name="mirror", daemon=True)
        t.start()
        self.threads.append(t)

    # -- waiting (for tests and `ingest`) ------------------------------------------------------

    def queue_depths(self) -> dict[str, int]:
        sqs = self.client("sqs")
        out = {}
        for lid, url in self.queue_urls.items():
            a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
            out[lid] = int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])
        return out

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.2) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return False
