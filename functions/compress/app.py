"""compress: S3 Object Created (EventBridge -> SQS) -> thumbnail + preview derivatives, bytes saved -> index."""

import os

from pixdex.handlers import make_sqs_handler
from pixdex.runtime import Runtime

lambda_handler = make_sqs_handler("compress", Runtime.from_env(os.environ))
