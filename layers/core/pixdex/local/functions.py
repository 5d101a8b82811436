"""Loading the real Lambda handlers from functions/<name>/app.py, as the Lambda service would."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from pixdex.local.template import LOCAL_ACCOUNT_ID, FunctionSpec

Handler = Callable[[dict[str, Any], Any], Any]


class LocalContext(LambdaContext):
    """Lambda's context object as the local stack and tests hand it to handlers (powertools reads it)."""

    def __init__(self, function_name: str, memory_limit_in_mb: int = 1024) -> None:
        self._function_name = function_name
        self._function_version = "$LATEST"
        self._invoked_function_arn = f"arn:aws:lambda:us-east-1:{LOCAL_ACCOUNT_ID}:function:{function_name}"
        self._memory_limit_in_mb = memory_limit_in_mb
        self._aws_request_id = str(uuid.uuid4())
        self._log_group_name = f"/aws/lambda/{function_name}"
        self._log_stream_name = "local"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 300_000


def load_handler(spec: FunctionSpec) -> Handler:
    """Import functions/<name>/<module>.py under a unique module name and return its handler.

    The module builds its container-level singletons from os.environ at import, exactly as in Lambda, so the
    caller sets the environment first."""
    module_name, attr = spec.handler.rsplit(".", 1)
    path = spec.code_uri / f"{module_name}.py"
    unique = f"pixdex_function_{spec.name}"
    if unique in sys.modules:
        return getattr(sys.modules[unique], attr)  # type: ignore[no-any-return]
    mod_spec = importlib.util.spec_from_file_location(unique, path)
    if mod_spec is None or mod_spec.loader is None:
        raise FileNotFoundError(f"no handler module at {path}")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[unique] = module
    mod_spec.loader.exec_module(module)
    return getattr(module, attr)  # type: ignore[no-any-return]


def invoke(spec: FunctionSpec, event: dict[str, Any]) -> Any:
    return load_handler(spec)(event, LocalContext(function_name=spec.name))
