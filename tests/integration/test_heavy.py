"""The GPU batch task: bulk processing through the same pipeline, resumable, and the analyze function's
routing of huge images to it (AWS Batch emulated by moto)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from pixdex import heavy
from pixdex.document import document_id
from pixdex.events import ObjectEvent
from pixdex.pipeline import Outcome
from pixdex.runtime import Runtime
from pixdex.settings import Settings
from tests import imagegen

ORIG, DERIV = "heavy-originals", "heavy-derivatives"


@pytest.fixture
def s3(aws_env: dict[str, str]) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=ORIG)
        client.create_bucket(Bucket=DERIV)
        yield client


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(originals_bucket=ORIG, derivatives_bucket=DERIV, index_url=f"sqlite:///{tmp_path / 'i.db'}",
                    capabilities=("classify", "embed", "caption"), **extra)


def test_bulk_run_is_idempotent_and_resumes(s3: Any, tmp_path: Path) -> None:
    keys = [f"bulk/{i}.jpg" for i in range(5)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=ORIG, Key=key, Body=imagegen.jpeg_bytes(400, 300, seed=i))
    s3.put_object(Bucket=ORIG, Key="bulk/broken.jpg", Body=imagegen.truncated_jpeg())
    runtime = Runtime(_settings(tmp_path), route_heavy=False)
    all_keys = heavy.collect_keys(runtime, ORIG, [], "bulk/", None)
    assert len(all_keys) == 6
    # An interrupted earlier attempt got through the first two objects.
    first = heavy.run(runtime, bucket=ORIG, keys=all_keys[:2], job_id="j", batch_size=2)
    assert (first.processed, first.failed) == (2, 0)
    checkpoint = json.loads(s3.get_object(Bucket=DERIV, Key="_jobs/j/0.json")["Body"].read())
    assert checkpoint["done"] == 2
    progress = heavy.run(runtime, bucket=ORIG, keys=all_keys, job_id="j2", batch_size=4)
    # The two done before are skipped (same ETag), the broken file fails alone, the rest are processed.
    assert (progress.done, progress.skipped, progress.failed, progress.processed) == (6, 2, 1, 3)
    for key in keys:
        doc = runtime.index.get(document_id(ORIG, key))
        assert doc is not None and doc["labels"] and doc["derivatives"]["thumbnail"]
    # Run again with the same job id: the checkpoint says everything is done; nothing is redone.
    again = heavy.run(runtime, bucket=ORIG, keys=all_keys, job_id="j2", batch_size=4)
    assert again == progress
    # Sharding splits the same sorted key list without overlap.
    shards = [heavy.shard(all_keys, i, 3) for i in range(3)]
    assert sorted(k for s in shards for k in s) == all_keys


def test_huge_images_are_routed_to_the_gpu_task(s3: Any, tmp_path: Path) -> None:
    batch = boto3.client("batch", region_name="us-east-1")
    iam = boto3.client("iam", region_name="us-east-1")
    role = iam.create_role(RoleName="r", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    env = batch.create_compute_environment(computeEnvironmentName="gpu", type="UNMANAGED", serviceRole=role)
    order = [{"order": 1, "computeEnvironment": env["computeEnvironmentArn"]}]
    queue = batch.create_job_queue(jobQueueName="heavy", state="ENABLED", priority=1, computeEnvironmentOrder=order)
    definition = batch.register_job_definition(jobDefinitionName="heavy", type="container",
                                               containerProperties={"image": "pixdex-heavy", "vcpus": 1, "memory": 512})
    settings = _settings(tmp_path, gpu_pixel_threshold=1_000_000, batch_job_queue=queue["jobQueueArn"],
                         batch_job_definition=definition["jobDefinitionArn"])
    s3.put_object(Bucket=ORIG, Key="big.jpg", Body=imagegen.jpeg_bytes(1600, 1200, seed=1))
    s3.put_object(Bucket=ORIG, Key="small.jpg", Body=imagegen.jpeg_bytes(800, 600, seed=2))
    lam = Runtime(settings)
    events = [ObjectEvent(kind="created", bucket=ORIG, key=k) for k in ("big.jpg", "small.jpg")]
    assert lam.pipeline.analyze_many(events) == [Outcome.ROUTED, Outcome.PROCESSED]
    big = lam.index.get(document_id(ORIG, "big.jpg"))
    assert big is not None and big["analyze_state"]["pending"] == "gpu" and "labels" not in big
    job = batch.describe_jobs(jobs=[big["analyze_state"]["job_id"]])["jobs"][0]
    assert job["container"]["command"][-2:] == ["--key", "big.jpg"]
    # A redelivered event does not submit a second job.
    assert lam.pipeline.analyze_many(events[:1]) == [Outcome.DUPLICATE]
    # The GPU task (no routing) does the work the job asked for.
    gpu = Runtime(settings, route_heavy=False)
    assert heavy.run(gpu, bucket=ORIG, keys=["big.jpg"], job_id=job["jobId"], stages=("analyze",)).processed == 1
    done = gpu.index.get(document_id(ORIG, "big.jpg"))
    assert done is not None and done["labels"] and not done["analyze_state"].get("pending")


def test_reindex_from_bucket_rebuilds_the_embedded_index(s3: Any, tmp_path: Path) -> None:
    from pixdex.index.reindex import main as reindex_main
    from pixdex.index.sqlite import SqliteIndex

    settings = _settings(tmp_path)
    for i in range(3):
        s3.put_object(Bucket=ORIG, Key=f"lib/{i}.png", Body=imagegen.png_bytes(200, 150, seed=i))
    # The index was lost (or belongs to older models): a stale document no object backs is in it.
    stale = SqliteIndex(tmp_path / "i.db")
    stale.ensure()
    stale.upsert("ghost", {"name_text": "nothing backs me"})
    stale.close()
    assert reindex_main(["--from-bucket"], settings=settings) == 0
    rebuilt = SqliteIndex(tmp_path / "i.db")
    assert rebuilt.get("ghost") is None
    assert rebuilt.count() == 3
    doc = rebuilt.get(document_id(ORIG, "lib/1.png"))
    assert doc is not None and doc["labels"] and doc["derivatives"]["preview"]
    assert not (tmp_path / "i.db.rebuild").exists()
