"""Card data in Prometheus labels: the HTTP method is client-chosen.

An HTTP method is any token (RFC 9110), digits included: ``4000056655665556 /v1/tokens HTTP/1.1``
parses, and the method became a label of ``tessera_http_requests`` and
``tessera_http_request_seconds``, served on ``/metrics`` to anyone who scrapes it.
"""

from __future__ import annotations

from prometheus_client import generate_latest

from gateway.observability import GatewayMetrics
from tests.vault.canary import Canary, find_leaks

CANARY = Canary(pan="4000056655665556", cvc="7391")


def test_a_client_chosen_method_is_not_a_label() -> None:
    metrics = GatewayMetrics()
    for method in (CANARY.pan, CANARY.cvc, "4000-0566-5566-5556", "GET", "PROPFIND"):
        metrics.observe_request("unmatched", method, 405, 0.001)
    text = generate_latest(metrics.registry).decode()
    assert find_leaks(text, CANARY) == []
    assert 'method="GET"' in text and 'method="other"' in text
    assert "PROPFIND" not in text  # unknown methods share one label: the label set stays small


def test_standard_methods_keep_their_label() -> None:
    metrics = GatewayMetrics()
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        metrics.observe_request("/v1/tokens", method, 200, 0.001)
    text = generate_latest(metrics.registry).decode()
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        assert f'method="{method}"' in text
