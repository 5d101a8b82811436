"""remove: S3 Object Deleted (EventBridge -> SQS) -> the document and its derivatives are deleted."""

import os

from pixdex.handlers import make_sqs_handler
from pixdex.runtime import Runtime

lambda_handler = make_sqs_handler("remove", Runtime.from_env(os.environ))
