"""compress: S3 Object Created (EventBridge -> SQS) -> thumbnail and preview derivatives, compression figures, index upsert."""

import os

from pixdex.handlers import make_sqs_handler
from pixdex.runtime import Runtime

lambda_handler = make_sqs_handler("compress", Runtime.from_env(os.environ))
