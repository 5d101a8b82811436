"""A function's poller in its own process, against a running `pixdex up` (Lambda's concurrency, locally).

``python -m pixdex.local.worker --data DIR --function compress`` polls that function's queue of the stack
whose state is in DIR/stack.json and hands batches to the real handler, beside the stack's own poller:
what several concurrent Lambda instances do. Used to check the chain under concurrent consumers and
under a consumer killed mid-batch; ``--visibility-timeout`` shortens how long a killed consumer's
messages stay hidden (the queue's own timeout is minutes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pixdex.local.functions import load_handler
from pixdex.local.poller import QueuePoller
from pixdex.local.stack import LocalStack, UpOptions


def attached_options(data_dir: Path, state: Mapping[str, Any], index_url: str | None = None) -> UpOptions:
    """The options of the running stack whose state file (`stack.json`) says ``state``.

    The worker's function gets the same settings as the stack's own (its index URL, the k-NN engine of
    `--opensearch`, the PIXDEX_* settings given to `pixdex up`), not this process's environment.
    """
    port = int(str(state["aws_endpoint"]).rsplit(":", 1)[1])
    return UpOptions(data_dir=data_dir, aws_port=port, index_url=index_url or state.get("index_url"),
                     extra_env=dict(state.get("function_settings") or {}))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pixdex.local.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the running stack's state folder")
    parser.add_argument("--function", required=True, help="compress | analyze | remove")
    parser.add_argument("--index-url", default=None, help="an index URL other than the stack's own")
    parser.add_argument("--visibility-timeout", type=int, default=None)
    parser.add_argument("--log-level", default="INFO", help="for the handler's logs (one JSON line per object)")
    args = parser.parse_args(argv)

    state: dict[str, Any] = json.loads((args.data / "stack.json").read_text())
    stack = LocalStack(attached_options(args.data, state, args.index_url))
    fn = stack.spec.functions[args.function]
    if fn.queue is None:
        raise SystemExit(f"{args.function} has no queue")
    # The handler builds its clients from the environment at import, as in Lambda: this is the edge.
    os.environ.update(stack.environment())
    os.environ["POWERTOOLS_LOG_LEVEL"] = args.log_level
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sqs = stack.client("sqs")
    queue = stack.spec.queues[fn.queue]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    poller = QueuePoller(
        name=fn.name, sqs=sqs, queue_url=sqs.get_queue_url(QueueName=queue.name)["QueueUrl"], queue_arn=queue.arn,
        handler=load_handler(fn), batch_size=fn.batch_size, region=stack.options.region, stop=stop,
        visibility_timeout=args.visibility_timeout,
    )
    print(f"worker {fn.name} polling {queue.name}", flush=True)
    poller.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
