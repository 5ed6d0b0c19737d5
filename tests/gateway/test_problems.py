"""``gateway.problems.problem_response``: the problem+json body; the error middleware's detail for
a vault refusal (``gateway.app._vault_detail``)."""

from __future__ import annotations

import orjson

from gateway.app import _vault_detail
from gateway.problems import PROBLEM_CONTENT_TYPE, problem_response, status_for
from normalization.errors import (
    TokenIntegrityError,
    VaultNotFoundError,
    VaultPermissionDeniedError,
    VaultUnavailableError,
)


def _body(response: object) -> dict[str, object]:
    body = getattr(response, "body", b"")
    assert isinstance(body, bytes)
    return dict(orjson.loads(body))


def test_vault_permission_denied_says_the_credentials_were_refused() -> None:
    # As the error middleware answers it: the detail is chosen by the error, not a generic outage.
    error = VaultPermissionDeniedError()
    response = problem_response(503, error.code, _vault_detail(error), retry_after=1)
    body = _body(response)
    assert response.status == 503
    assert response.content_type == PROBLEM_CONTENT_TYPE
    assert response.headers["Retry-After"] == "1"
    assert body["title"] == "Service Unavailable"
    assert body["code"] == "vault_permission_denied"
    assert body["detail"] == (
        "The token vault refused the gateway's credentials; the gateway's Vault role and "
        "secret id (or token) need attention. Retry later."
    )
    assert "unavailable" not in str(body["detail"])
    assert _vault_detail(VaultUnavailableError()) == (
        "The token vault is unavailable; nothing was stored. Retry later."
    )


def test_other_codes_keep_the_detail_they_were_given() -> None:
    body = _body(problem_response(503, "vault_unavailable", "The token vault is unavailable."))
    assert body["detail"] == "The token vault is unavailable."
    body = _body(problem_response(400, "http_error", "Bad.", request_id="r"))
    assert (body["detail"], body["request_id"]) == ("Bad.", "r")


def test_vault_errors_are_503_but_a_wrong_stored_row_is_500() -> None:
    """Since the error middleware answers vault errors with ``status_for``, its first rule sent
    ``VaultNotFoundError`` (a merchant's transit key missing) out as 404, as if the client had
    asked for something that does not exist: it is the vault's problem, 503."""
    assert status_for(VaultNotFoundError()) == 503
    assert status_for(VaultUnavailableError()) == 503
    assert status_for(TokenIntegrityError()) == 500
