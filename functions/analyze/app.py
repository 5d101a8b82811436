"""analyze: S3 Object Created (EventBridge -> SQS) -> hashes, EXIF, dimensions (and model outputs) -> index upsert."""

import os

from pixdex.handlers import make_sqs_handler
from pixdex.runtime import Runtime

lambda_handler = make_sqs_handler("analyze", Runtime.from_env(os.environ))
