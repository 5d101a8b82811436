"""Fixtures shared by every test layer."""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
_counter = itertools.count()


def load_function(name: str) -> Callable[[dict[str, Any], Any], Any]:
    """A fresh import of functions/<name>/app.py, so its container-level singletons see this test's env."""
    path = REPO / "functions" / name / "app.py"
    spec = importlib.util.spec_from_file_location(f"_test_fn_{name}_{next(_counter)}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lambda_handler  # type: ignore[no-any-return]


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Environment of a function under moto's in-process mock: fake credentials, local index in tmp."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "PIXDEX_ORIGINALS_BUCKET": "pixdex-local-originals-123456789012-us-east-1",
        "PIXDEX_DERIVATIVES_BUCKET": "pixdex-local-derivatives-123456789012-us-east-1",
        "PIXDEX_DATA_DIR": str(tmp_path / "data"),
        "POWERTOOLS_METRICS_NAMESPACE": "pixdex",
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture(scope="session")
def opensearch_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real single-node OpenSearch (with k-NN, Lucene engine) built from tools/opensearch-node,
    started once per session. In CI (CI=true) a node that cannot start fails the tests that need it;
    elsewhere they are skipped with the reason."""
    import os

    from pixdex.local.opensearch_node import NodeError, OpenSearchNode

    node = OpenSearchNode(tmp_path_factory.mktemp("opensearch-node"))
    try:
        url = node.start()
    except (NodeError, OSError) as exc:
        node.stop()
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the OpenSearch node must run in CI: {exc}", pytrace=False)
        pytest.skip(f"no local OpenSearch node (Java 17 and Maven needed): {exc}")
    try:
        yield url
    finally:
        node.stop()
