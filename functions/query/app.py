"""query: the search API behind API Gateway (HTTP API, payload v2)."""

import os

from pixdex.api import create_lambda_handler
from pixdex.runtime import Runtime

lambda_handler = create_lambda_handler(Runtime.from_env(os.environ))
