"""The capability manifest: what a connector declares about itself, validated at load time.

A manifest is data, not code. The registry checks it against the connector's verbs, the gateway
routes with it (methods, currencies, countries), the resilience runtime reads which operations
are safe to retry, the HTTP layer allowlists its hosts, and the conformance kit picks scenarios
from it (every declared capability must be exercised). ``tessera connector list`` prints it.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from normalization import Money, NotSupportedError, PaymentMethodType, known_currencies
from sdk.client_tls import CERTIFICATE_CREDENTIAL, KEY_CREDENTIAL, KEY_PASSWORD_CREDENTIAL
from sdk.operations import MONEY_MOVING_OPERATIONS, Operation

__all__ = [
    "BaseUrls",
    "Category",
    "CredentialField",
    "Environment",
    "IdempotencySupport",
    "Manifest",
    "MultiSupport",
]

_SLUG_RE = re.compile(r"[a-z][a-z0-9_]{1,39}", re.ASCII)
_HEADER_RE = re.compile(r"[A-Za-z0-9-]{1,64}", re.ASCII)
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*", re.ASCII)

_MANIFEST_CONFIG = ConfigDict(frozen=True, extra="forbid", str_max_length=2048)


class Category(StrEnum):
    """The conformance profile a connector is held to."""

    CARD_ACQUIRER = "card-acquirer"
    BANK_RAIL = "bank-rail"
    OPEN_BANKING = "open-banking"


class Environment(StrEnum):
    SANDBOX = "sandbox"
    LIVE = "live"


class MultiSupport(BaseModel):
    """Whether partial amounts, and more than one operation per payment, are supported."""

    model_config = _MANIFEST_CONFIG

    partial: bool = False
    multiple: bool = False

    @model_validator(mode="after")
    def _multiple_implies_partial(self) -> Self:
        if self.multiple and not self.partial:
            raise ValueError("multiple captures/refunds imply partial ones: set partial too")
        return self


class IdempotencySupport(BaseModel):
    """How the provider deduplicates retried requests.

    ``header``: the request header carrying the key (``Idempotency-Key`` at Stripe);
    ``body_field``: alternatively, a field of the request body (a merchant reference the
    provider refuses twice). ``retention_seconds``: how long the provider remembers a key.
    """

    model_config = _MANIFEST_CONFIG

    header: Annotated[str | None, Field(pattern=f"^{_HEADER_RE.pattern}$")] = None
    body_field: Annotated[str | None, Field(min_length=1, max_length=100)] = None
    retention_seconds: Annotated[int, Field(gt=0, le=366 * 86400)] = 86400

    @model_validator(mode="after")
    def _one_mechanism(self) -> Self:
        if self.header is None and self.body_field is None:
            raise ValueError("idempotency needs a header or a body_field")
        return self


class CredentialField(BaseModel):
    """One credential the connector needs (API key, merchant account, webhook secret, ...)."""

    model_config = _MANIFEST_CONFIG

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
    description: Annotated[str, Field(max_length=200)] = ""
    secret: bool = True
    required: bool = True


def _is_dns_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOST_RE.fullmatch(host) is not None and "." in host
    return False


def _check_https_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https":
        raise ValueError(f"{what} must be an https URL")
    if not parts.hostname or parts.username or parts.password:
        raise ValueError(f"{what} needs a host and no credentials")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must not have a query or fragment")
    if not _is_dns_name(parts.hostname):
        raise ValueError(f"{what} must name a DNS host (IP literals are refused)")
    return value.rstrip("/")


class BaseUrls(BaseModel):
    """Where the provider lives. Both are https URLs on DNS names."""

    model_config = _MANIFEST_CONFIG

    sandbox: str
    live: str | None = None

    @field_validator("sandbox")
    @classmethod
    def _check_sandbox(cls, value: str) -> str:
        return _check_https_url(value, "sandbox base URL")

    @field_validator("live")
    @classmethod
    def _check_live(cls, value: str | None) -> str | None:
        return None if value is None else _check_https_url(value, "live base URL")


class Manifest(BaseModel):
    """Everything a connector declares about itself. See the module docstring."""

    model_config = _MANIFEST_CONFIG

    id: Annotated[str, Field(pattern=f"^{_SLUG_RE.pattern}$")]
    display_name: Annotated[str, Field(min_length=1, max_length=100)]
    category: Category
    operations: frozenset[Operation]
    capture: MultiSupport = MultiSupport()
    refund: MultiSupport = MultiSupport()
    payment_methods: frozenset[PaymentMethodType]
    currencies: Annotated[frozenset[str], Field(min_length=1)]
    currency_exponents: dict[str, Annotated[int, Field(ge=0, le=4)]] = Field(default_factory=dict)
    countries: frozenset[Annotated[str, Field(pattern=r"^[A-Z]{2}$")]] = frozenset()
    idempotency: IdempotencySupport | None = None
    webhook_events: frozenset[Annotated[str, Field(min_length=1, max_length=100)]] = frozenset()
    retry_safe: frozenset[Operation] = frozenset()
    base_urls: BaseUrls
    extra_hosts: frozenset[str] = frozenset()
    credentials: tuple[CredentialField, ...] = ()
    #: Request or reply headers that carry credentials under a name the SDK does not know
    #: (``X-Acme-Session``): recorded as ``[REDACTED]`` in transcripts and cassettes, like
    #: ``Authorization``, cookies and ``X-Api-Key`` always are. Stored in lower case.
    sensitive_headers: frozenset[Annotated[str, Field(pattern=f"^{_HEADER_RE.pattern}$")]] = (
        frozenset()
    )
    documentation_url: str | None = None
    #: Every https call presents a TLS client certificate (mutual TLS, ``sdk.client_tls``), read
    #: from the credentials ``tls_client_certificate`` and ``tls_client_key`` (and the optional
    #: ``tls_client_key_password``), which the manifest must then declare.
    client_tls: bool = False

    @field_validator("currencies")
    @classmethod
    def _known_currencies(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = sorted(value - known_currencies())
        if unknown:
            raise ValueError(f"unknown ISO 4217 currencies: {', '.join(unknown)}")
        return value

    @field_validator("sensitive_headers")
    @classmethod
    def _lower_case(cls, value: frozenset[str]) -> frozenset[str]:
        return frozenset(name.lower() for name in value)

    @field_validator("extra_hosts")
    @classmethod
    def _dns_hosts(cls, value: frozenset[str]) -> frozenset[str]:
        for host in value:
            if not _is_dns_name(host):
                raise ValueError(f"extra host {host!r} is not a DNS name")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        ops = self.operations
        if not ops:
            raise ValueError("a connector declares at least one operation")
        if (self.capture.partial or self.capture.multiple) and Operation.CAPTURE not in ops:
            raise ValueError("partial/multiple capture declared without the capture operation")
        if (self.refund.partial or self.refund.multiple) and Operation.REFUND not in ops:
            raise ValueError("partial/multiple refund declared without the refund operation")
        undeclared = sorted(self.retry_safe - ops)
        if undeclared:
            raise ValueError(f"retry_safe names undeclared operations: {', '.join(undeclared)}")
        risky = sorted(self.retry_safe & MONEY_MOVING_OPERATIONS)
        if risky and self.idempotency is None:
            raise ValueError(
                f"{', '.join(risky)} declared safe to retry without idempotency support: "
                "a retry could move money twice"
            )
        if (Operation.WEBHOOKS in ops) != bool(self.webhook_events):
            raise ValueError("the webhooks operation and webhook_events go together")
        overrides = sorted(set(self.currency_exponents) - self.currencies)
        if overrides:
            raise ValueError(f"exponent overrides of undeclared currencies: {', '.join(overrides)}")
        names = [field.name for field in self.credentials]
        if len(names) != len(set(names)):
            raise ValueError("credential field names must be unique")
        tls_names = {CERTIFICATE_CREDENTIAL, KEY_CREDENTIAL}
        if self.client_tls and not tls_names <= set(names):
            raise ValueError(
                "client_tls needs the credentials tls_client_certificate and tls_client_key"
            )
        if not self.client_tls and (tls_names | {KEY_PASSWORD_CREDENTIAL}) & set(names):
            raise ValueError(
                "tls_client_* credentials are presented only with client_tls = true: set it"
            )
        if not self.payment_methods:
            raise ValueError("a connector supports at least one payment method type")
        return self

    # -- queries ---------------------------------------------------------------------------------

    def supports(self, operation: Operation) -> bool:
        return operation in self.operations

    def is_retry_safe(self, operation: Operation | str) -> bool:
        """Whether a call may be repeated after an ambiguous failure (5xx, reset, timeout)."""
        return Operation(operation) in self.retry_safe

    def exponent_for(self, currency: str) -> int | None:
        """The provider's exponent for ``currency`` when it differs from ISO 4217, else None."""
        return self.currency_exponents.get(currency)

    def base_url(self, environment: Environment) -> str:
        if environment is Environment.LIVE:
            if self.base_urls.live is None:
                raise ValueError(f"connector {self.id!r} declares no live base URL")
            return self.base_urls.live
        return self.base_urls.sandbox

    def allowed_hosts(self, environment: Environment) -> frozenset[str]:
        """The hosts provider calls may go to in ``environment``: the base URL's plus extras."""
        host = urlsplit(self.base_url(environment)).hostname
        assert host is not None  # validated
        return frozenset({host}) | self.extra_hosts

    def check_supported(self, operation: Operation, request: object) -> None:
        """Raise ``NotSupportedError`` before any network call when the operation, currency or
        payment method of ``request`` is outside this manifest."""
        if operation not in self.operations:
            raise NotSupportedError(f"Connector {self.id!r} does not support {operation.value}.")
        amount = getattr(request, "amount", None)
        currency = (
            amount.currency if isinstance(amount, Money) else getattr(request, "currency", None)
        )
        if isinstance(currency, str) and currency not in self.currencies:
            raise NotSupportedError(f"Connector {self.id!r} does not support {currency}.")
        for attribute in ("payment_method", "destination", "source", "payer"):
            method = getattr(request, attribute, None)
            kind = getattr(method, "type", None)
            if kind is not None and PaymentMethodType(kind) not in self.payment_methods:
                raise NotSupportedError(
                    f"Connector {self.id!r} does not support {kind} payment methods."
                )
