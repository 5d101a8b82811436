"""The shared body of the SQS-triggered functions: one record in, one pipeline stage run.

functions/<name>/app.py wires this to powertools' BatchProcessor; a record that raises becomes a batch item
failure, so SQS retries it and finally moves it to the function's dead-letter queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from pixdex import requeue
from pixdex.errors import BackendUnavailableError, IndexMappingError, PixdexError
from pixdex.events import ObjectEvent, parse_message
from pixdex.pipeline import Outcome
from pixdex.runtime import Runtime

LambdaHandler = Callable[[dict[str, Any], LambdaContext], PartialItemFailureResponse]


class StageRecordHandler:
    def __init__(self, stage: str, runtime: Runtime, logger: Logger, metrics: Metrics) -> None:
        self.stage = stage
        self.runtime = runtime
        self.logger = logger
        self.metrics = metrics
        # Precomputed outcomes for a whole batch (see prepare); None: handle records one by one.
        self._batch: dict[str, list[Outcome | Exception]] | None = None

    def prepare(self, event: dict[str, Any]) -> None:
        """Run the stage over every event of the SQS batch at once, so the models see one real batch;
        the per-record calls that follow then only report each record's result."""
        parsed: dict[str, list[ObjectEvent]] = {}
        for record in event.get("Records", []):
            try:
                parsed[record["messageId"]] = parse_message(record["body"])
            except PixdexError:
                continue  # reported by __call__, which parses again
        flat = [ev for evs in parsed.values() for ev in evs]
        try:
            results = iter(self.runtime.pipeline.analyze_many(flat))
        except PixdexError as exc:
            # E.g. the index cannot even be opened: each record fails with this error (and an outage is
            # requeued) instead of the whole invocation raising, which would spend every record's deliveries.
            self._batch = {mid: [exc] * len(evs) for mid, evs in parsed.items()}
            return
        self._batch = {mid: [next(results) for _ in evs] for mid, evs in parsed.items()}

    def forget_batch(self) -> None:
        self._batch = None

    def __call__(self, record: SQSRecord) -> None:
        try:
            events = parse_message(record.body)
        except PixdexError as exc:
            self._failed(exc, record.message_id, None)
            raise
        done = self._batch.get(record.message_id) if self._batch is not None else None
        for n, event in enumerate(events):
            uri = f"s3://{event.bucket}/{event.key}"
            try:
                result = done[n] if done is not None else self.runtime.pipeline.handle(self.stage, event)
                if isinstance(result, Exception):
                    raise result
            except PixdexError as exc:
                self._failed(exc, record.message_id, uri)
                if exc.retryable and self._requeued(record):
                    return  # the whole message comes back later; its other events are idempotent
                raise
            self.logger.info(
                "object handled",
                stage=self.stage, outcome=result.value, bucket=event.bucket, key=event.key,
                receive_count=record.attributes.approximate_receive_count,
            )
            self.metrics.add_metric(name=f"Outcome_{result.value}", unit=MetricUnit.Count, value=1)

    def _requeued(self, record: SQSRecord) -> bool:
        """Put the message back for an outage without spending a delivery (see pixdex.requeue)."""
        attempt = requeue.outage_retries(record) + 1
        if attempt > requeue.MAX_OUTAGE_RETRIES:
            return False
        delay = requeue.outage_delay(attempt)
        try:
            self.runtime.requeuer.requeue(record, attempt=attempt, delay_seconds=delay)
        except Exception as exc:  # the queue itself is unreachable: the normal retry path takes over
            self.logger.warning("requeue failed", message_id=record.message_id, error=str(exc))
            return False
        self.logger.info("requeued for an outage", message_id=record.message_id, attempt=attempt, delay_s=delay)
        self.metrics.add_metric(name="OutageRequeued", unit=MetricUnit.Count, value=1)
        return True

    def _failed(self, exc: PixdexError, message_id: str, uri: str | None) -> None:
        self.logger.warning(
            "object failed",
            stage=self.stage, error=exc.code, reason=exc.message, retryable=exc.retryable,
            message_id=message_id, object=uri,
        )
        self.metrics.add_metric(name=f"Error_{exc.code}", unit=MetricUnit.Count, value=1)
        if is_index_error(exc):
            self.metrics.add_metric(name="IndexErrors", unit=MetricUnit.Count, value=1)


def is_index_error(exc: PixdexError) -> bool:
    """Failures of the index (the alarm on IndexErrors watches these); storage errors name their bucket."""
    return isinstance(exc, IndexMappingError | BackendUnavailableError) and "bucket" not in exc.context


def make_sqs_handler(stage: str, runtime: Runtime) -> LambdaHandler:
    """A Lambda entry point for an SQS-triggered stage, with JSON logs, EMF metrics, tracing and partial
    batch failure reporting. Built once per container at import time."""
    logger = Logger(service=f"pixdex-{stage}")
    metrics = Metrics(namespace="pixdex", service=f"pixdex-{stage}")
    tracer = Tracer(service=f"pixdex-{stage}")
    processor = BatchProcessor(event_type=EventType.SQS)
    record_handler = StageRecordHandler(stage, runtime, logger, metrics)

    @logger.inject_lambda_context
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
        if stage == "analyze":
            record_handler.prepare(event)
        try:
            return process_partial_response(
                event=event, record_handler=record_handler, processor=processor, context=context
            )
        finally:
            record_handler.forget_batch()

    return lambda_handler
