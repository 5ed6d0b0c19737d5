"""The error tree shared by every Tessera package.

Errors are translated once, at each boundary (httpx -> ``ConnectorError``, Vault HTTP ->
``VaultError``, pydantic -> ``InvalidRequestError``), and rendered once, by the gateway's error
middleware, as ``application/problem+json`` whose ``code`` is the class's stable ``code``::

    TesseraError                          tessera_error
    ├── InvalidRequestError               invalid_request
    │   ├── InvalidAmountError            invalid_amount
    │   ├── UnknownCurrencyError          unknown_currency
    │   ├── CurrencyMismatchError         currency_mismatch
    │   ├── InvalidCardError              invalid_card
    │   │   ├── InvalidCardNumberError    invalid_card_number
    │   │   ├── InvalidExpiryError        invalid_expiry
    │   │   └── InvalidSecurityCodeError  invalid_cvc
    │   └── InvalidBankAccountError       invalid_bank_account
    ├── NotFoundError                     not_found
    │   ├── TokenNotFoundError            token_not_found
    │   └── PaymentNotFoundError          payment_not_found
    ├── NotSupportedError                 not_supported
    │   ├── PartialCaptureNotSupportedError   partial_capture_not_supported
    │   ├── PartialRefundNotSupportedError    partial_refund_not_supported
    │   └── MultipleRefundsNotSupportedError  multiple_refunds_not_supported
    ├── IllegalTransitionError            invalid_state_transition
    │   ├── CaptureExceedsAuthorizedError amount_exceeds_capturable
    │   └── RefundExceedsCapturedError    amount_exceeds_refundable
    ├── ConnectorError                    connector_error
    │   ├── ConnectorConfigurationError   connector_misconfigured
    │   ├── ConnectorUnavailableError     connector_unavailable   (breaker open)
    │   ├── ConnectorBusyError            connector_busy          (bulkhead full)
    │   ├── ConnectorTimeoutError         connector_timeout       (deadline spent)
    │   └── ProviderError                 provider_error          (5xx, unparseable reply)
    └── VaultError                        vault_error
        ├── VaultUnavailableError         vault_unavailable
        ├── VaultSealedError              vault_sealed
        ├── VaultPermissionDeniedError    vault_permission_denied
        ├── VaultNotFoundError            vault_not_found
        └── TokenIntegrityError           token_integrity_error

Business outcomes (declines, ``requires_action``) are values on ``PaymentResult``, never
exceptions. Messages are written by Tessera code, never interpolated from card data: no PAN, CVV
or credential may ever reach ``str(error)``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CaptureExceedsAuthorizedError",
    "ConnectorBusyError",
    "ConnectorConfigurationError",
    "ConnectorError",
    "ConnectorTimeoutError",
    "ConnectorUnavailableError",
    "CurrencyMismatchError",
    "IllegalTransitionError",
    "InvalidAmountError",
    "InvalidBankAccountError",
    "InvalidCardError",
    "InvalidCardNumberError",
    "InvalidExpiryError",
    "InvalidRequestError",
    "InvalidSecurityCodeError",
    "MultipleRefundsNotSupportedError",
    "NotFoundError",
    "NotSupportedError",
    "PartialCaptureNotSupportedError",
    "PartialRefundNotSupportedError",
    "PaymentNotFoundError",
    "ProviderError",
    "RefundExceedsCapturedError",
    "TesseraError",
    "TokenIntegrityError",
    "TokenNotFoundError",
    "UnknownCurrencyError",
    "VaultError",
    "VaultNotFoundError",
    "VaultPermissionDeniedError",
    "VaultSealedError",
    "VaultUnavailableError",
]


class TesseraError(Exception):
    """Root of every error Tessera raises on purpose.

    ``code`` is stable and machine-readable; ``detail`` is a human sentence that never carries
    card data. ``retry_after`` (seconds) is set where waiting is the right answer.
    """

    code: ClassVar[str] = "tessera_error"
    default_detail: ClassVar[str] = "An error occurred."

    def __init__(self, detail: str | None = None, *, retry_after: float | None = None) -> None:
        self.detail = detail if detail is not None else self.default_detail
        self.retry_after = retry_after
        super().__init__(self.detail)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, detail={self.detail!r})"


class InvalidRequestError(TesseraError):
    code = "invalid_request"
    default_detail = "The request is invalid."


class InvalidAmountError(InvalidRequestError):
    code = "invalid_amount"
    default_detail = "The amount is invalid."


class UnknownCurrencyError(InvalidRequestError):
    code = "unknown_currency"
    default_detail = "The currency is not an ISO 4217 currency that can be paid in."


class CurrencyMismatchError(InvalidRequestError):
    code = "currency_mismatch"
    default_detail = "The amounts are in different currencies."


class InvalidCardError(InvalidRequestError):
    code = "invalid_card"
    default_detail = "The card data is invalid."


class InvalidCardNumberError(InvalidCardError):
    code = "invalid_card_number"
    default_detail = "The card number is not a valid PAN (12-19 ASCII digits passing Luhn)."


class InvalidExpiryError(InvalidCardError):
    code = "invalid_expiry"
    default_detail = "The expiry date is invalid or in the past."


class InvalidSecurityCodeError(InvalidCardError):
    code = "invalid_cvc"
    default_detail = "The card security code must be 3 or 4 ASCII digits."


class InvalidBankAccountError(InvalidRequestError):
    code = "invalid_bank_account"
    default_detail = "The bank account details are invalid."


class NotFoundError(TesseraError):
    code = "not_found"
    default_detail = "No such resource."


class TokenNotFoundError(NotFoundError):
    code = "token_not_found"
    default_detail = "No such token."


class PaymentNotFoundError(NotFoundError):
    code = "payment_not_found"
    default_detail = "No such payment."


class NotSupportedError(TesseraError):
    code = "not_supported"
    default_detail = "The operation, payment method or currency is not supported."


class PartialCaptureNotSupportedError(NotSupportedError):
    code = "partial_capture_not_supported"
    default_detail = "The payment's connector captures the whole authorization only."


class PartialRefundNotSupportedError(NotSupportedError):
    code = "partial_refund_not_supported"
    default_detail = "The payment's connector refunds the whole captured amount only."


class MultipleRefundsNotSupportedError(NotSupportedError):
    code = "multiple_refunds_not_supported"
    default_detail = "The payment's connector takes one refund per payment."


class IllegalTransitionError(TesseraError):
    code = "invalid_state_transition"
    default_detail = "The payment is not in a state that allows this operation."


class CaptureExceedsAuthorizedError(IllegalTransitionError):
    code = "amount_exceeds_capturable"
    default_detail = "The capture amount exceeds the amount still capturable."


class RefundExceedsCapturedError(IllegalTransitionError):
    code = "amount_exceeds_refundable"
    default_detail = "The refund amount exceeds the amount still refundable."


class ConnectorError(TesseraError):
    code = "connector_error"
    default_detail = "The connector failed."


class ConnectorConfigurationError(ConnectorError):
    code = "connector_misconfigured"
    default_detail = "The connector is misconfigured."


class ConnectorUnavailableError(ConnectorError):
    code = "connector_unavailable"
    default_detail = "The connector is unavailable (circuit open)."


class ConnectorBusyError(ConnectorError):
    code = "connector_busy"
    default_detail = "The connector has too many calls in flight."


class ConnectorTimeoutError(ConnectorError):
    code = "connector_timeout"
    default_detail = "The connector call ran out of time."


class ProviderError(ConnectorError):
    code = "provider_error"
    default_detail = "The provider answered with an error."


class VaultError(TesseraError):
    code = "vault_error"
    default_detail = "The vault failed."


class VaultUnavailableError(VaultError):
    code = "vault_unavailable"
    default_detail = "The vault is unreachable."


class VaultSealedError(VaultError):
    code = "vault_sealed"
    default_detail = "The vault is sealed."


class VaultPermissionDeniedError(VaultError):
    code = "vault_permission_denied"
    default_detail = "The vault refused the operation."


class VaultNotFoundError(VaultError):
    code = "vault_not_found"
    default_detail = "The vault has no such key or secret."


class TokenIntegrityError(VaultError):
    """What a token's ciphertext decrypts to is not the card its record describes (BIN, last
    four, length): the row was tampered with or restored wrongly. Nothing is revealed."""

    code = "token_integrity_error"
    default_detail = "The stored card does not match its token; it was not used."
