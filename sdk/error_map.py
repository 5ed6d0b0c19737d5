"""Error maps: a connector's provider error codes, as a data table, onto normalized codes.

Each connector declares one ``ErrorMap`` (in its ``transformers.py``)::

    ERROR_MAP = ErrorMap({
        "card_declined": DeclineCode.DO_NOT_HONOR,
        "insufficient_funds": DeclineCode.INSUFFICIENT_FUNDS,
        "lock_timeout": ErrorMapping(DeclineCode.PROCESSING_ERROR, retryable=True),
    })

``ErrorMap.result`` turns a provider code into a declined ``PaymentResult`` (declines are values,
never exceptions). A code missing from the table becomes ``processing_error`` carrying the raw
provider code, and is reported through ``on_unmapped`` (the runtime counts it in a metric, so
gaps in a map show up in monitoring). A *retryable* entry means the provider did not act and
asks to be asked again: ``result`` raises ``RetryableProviderError``, which the resilience
runtime retries within the deadline and, when it gives up, turns back into the declined result.
Provider messages are scrubbed of anything shaped like card data before they are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from normalization import DeclineCode, PaymentResult
from sdk.outcomes import RetryableProviderError
from sdk.scrubbing import Scrubber

__all__ = ["ErrorMap", "ErrorMapping", "MappedError"]

_SCRUBBER = Scrubber()


@dataclass(frozen=True, slots=True)
class ErrorMapping:
    """One row of an error map."""

    code: DeclineCode
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class MappedError:
    """A provider code after lookup. ``mapped`` is False for codes missing from the map."""

    code: DeclineCode
    retryable: bool
    mapped: bool
    provider_code: str | None


class ErrorMap(Mapping[str, ErrorMapping]):
    """An immutable table from provider codes to ``ErrorMapping`` rows."""

    __slots__ = ("_entries", "_unmapped_code")

    def __init__(
        self,
        entries: Mapping[str, DeclineCode | ErrorMapping],
        *,
        unmapped_code: DeclineCode = DeclineCode.PROCESSING_ERROR,
    ) -> None:
        self._entries = {
            key: value if isinstance(value, ErrorMapping) else ErrorMapping(value)
            for key, value in entries.items()
        }
        self._unmapped_code = unmapped_code

    def __getitem__(self, provider_code: str) -> ErrorMapping:
        return self._entries[provider_code]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ErrorMap({len(self._entries)} codes)"

    def resolve(self, provider_code: str | None) -> MappedError:
        entry = self._entries.get(provider_code) if provider_code is not None else None
        if entry is None:
            return MappedError(self._unmapped_code, False, False, provider_code)
        return MappedError(entry.code, entry.retryable, True, provider_code)

    def result(
        self,
        provider_code: str | None,
        message: str = "",
        *,
        provider_reference: str | None = None,
        retry_after: float | None = None,
        on_unmapped: Callable[[str | None], None] | None = None,
    ) -> PaymentResult:
        """The declined result for ``provider_code``; raises ``RetryableProviderError`` for
        retryable codes (carrying the same result for when retries run out)."""
        mapped = self.resolve(provider_code)
        if not mapped.mapped and on_unmapped is not None:
            on_unmapped(provider_code)
        result = PaymentResult.declined(
            mapped.code,
            message=_SCRUBBER.scrub_text(message)[:500],
            provider_code=None if provider_code is None else provider_code[:100],
            provider_reference=provider_reference,
        )
        if mapped.retryable:
            raise RetryableProviderError(result, retry_after=retry_after)
        return result
