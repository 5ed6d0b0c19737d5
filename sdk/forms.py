"""Form bodies with bracketed keys, as Stripe and others take them.

``bracketed_form({"card": {"number": card.number, "exp_month": card.exp_month},
"metadata": {"order": "42"}, "expand": ["customer"]})`` gives
``{"card[number]": ..., "card[exp_month]": ..., "metadata[order]": "42", "expand[0]": "customer"}``,
ready for ``ctx.send(..., data=...)``. Card placeholders pass through untouched, so the egress
transport still finds them; booleans become ``true``/``false``; ``None`` values are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["bracketed_form"]


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if value is None:
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}[{key}]" if prefix else str(key), item, out)
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        for index, item in enumerate(value):
            _flatten(f"{prefix}[{index}]", item, out)
    elif isinstance(value, bool):
        out[prefix] = "true" if value else "false"
    elif isinstance(value, str):
        out[prefix] = value  # keeps CardPlaceholder instances as they are
    else:
        out[prefix] = str(value)


def bracketed_form(data: Mapping[str, Any]) -> dict[str, str]:
    """Flatten nested mappings and sequences into bracketed form keys."""
    out: dict[str, str] = {}
    _flatten("", data, out)
    return out
