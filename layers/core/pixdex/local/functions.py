"""Loading the real Lambda handlers from functions/<name>/app.py, as the Lambda service would."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pixdex.local.template import FunctionSpec

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class LocalContext:
    """The attributes of Lambda's context object that handlers and powertools read."""

    function_name: str
    memory_limit_in_mb: int = 1024
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
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
