"""A worker attached to a running stack runs its function with the stack's settings."""

from __future__ import annotations

from pathlib import Path

from pixdex import constants as env_names
from pixdex.local.worker import attached_options


def test_worker_takes_the_stacks_index_and_function_settings(tmp_path: Path) -> None:
    state = {"aws_endpoint": "http://127.0.0.1:4599", "index_url": "http://127.0.0.1:9200",
             "function_settings": {env_names.KNN_ENGINE: "lucene", env_names.INDEX_UPDATE_MODE: "merge"}}
    options = attached_options(tmp_path, state)
    assert options.aws_port == 4599 and options.index_url == "http://127.0.0.1:9200"
    assert options.extra_env == {env_names.KNN_ENGINE: "lucene", env_names.INDEX_UPDATE_MODE: "merge"}
    assert attached_options(tmp_path, state, "http://other:9200").index_url == "http://other:9200"


def test_state_of_a_stack_on_the_embedded_index(tmp_path: Path) -> None:
    options = attached_options(tmp_path, {"aws_endpoint": "http://127.0.0.1:4566"})
    assert options.index_url is None and options.extra_env == {}
