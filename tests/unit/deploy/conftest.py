"""What the deployment tests share: a real metrics endpoint to point probes and health checks at."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from streaming.http_endpoint import MetricsEndpoint


@pytest.fixture(scope="module")
def endpoint() -> Iterator[MetricsEndpoint]:
    with MetricsEndpoint(CollectorRegistry(), host="127.0.0.1", port=0) as running:
        yield running


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
