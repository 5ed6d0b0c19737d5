"""The error tree (stable codes, drawn in the module docstring) and the public surface."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import normalization
from normalization import errors
from normalization.errors import TesseraError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "domain.md"

#: The codes clients see in problem+json bodies. Changing one breaks clients: do it on purpose.
STABLE_CODES = {
    "TesseraError": "tessera_error",
    "InvalidRequestError": "invalid_request",
    "InvalidAmountError": "invalid_amount",
    "UnknownCurrencyError": "unknown_currency",
    "CurrencyMismatchError": "currency_mismatch",
    "InvalidCardError": "invalid_card",
    "InvalidCardNumberError": "invalid_card_number",
    "InvalidExpiryError": "invalid_expiry",
    "InvalidSecurityCodeError": "invalid_cvc",
    "InvalidBankAccountError": "invalid_bank_account",
    "NotFoundError": "not_found",
    "TokenNotFoundError": "token_not_found",
    "PaymentNotFoundError": "payment_not_found",
    "NotSupportedError": "not_supported",
    "PartialCaptureNotSupportedError": "partial_capture_not_supported",
    "PartialRefundNotSupportedError": "partial_refund_not_supported",
    "MultipleRefundsNotSupportedError": "multiple_refunds_not_supported",
    "IllegalTransitionError": "invalid_state_transition",
    "CaptureExceedsAuthorizedError": "amount_exceeds_capturable",
    "RefundExceedsCapturedError": "amount_exceeds_refundable",
    "ConnectorError": "connector_error",
    "ConnectorConfigurationError": "connector_misconfigured",
    "ConnectorUnavailableError": "connector_unavailable",
    "ConnectorBusyError": "connector_busy",
    "ConnectorTimeoutError": "connector_timeout",
    "ProviderError": "provider_error",
    "VaultError": "vault_error",
    "VaultUnavailableError": "vault_unavailable",
    "VaultSealedError": "vault_sealed",
    "VaultPermissionDeniedError": "vault_permission_denied",
    "VaultNotFoundError": "vault_not_found",
    "TokenIntegrityError": "token_integrity_error",
}


def error_classes() -> dict[str, type[TesseraError]]:
    return {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, TesseraError) and cls.__module__ == errors.__name__
    }


def drawn_tree() -> list[tuple[int, str, str]]:
    """(depth, class name, code) for each line of the tree in the errors module docstring."""
    doc = errors.__doc__ or ""
    lines = doc.split("::", 1)[1].splitlines()
    rows: list[tuple[int, str, str]] = []
    pattern = re.compile(r"^(?P<prefix>[ │├└─]*)(?P<name>[A-Z]\w+)\s+(?P<code>[a-z_]+)\b")
    for line in lines:
        if not line.strip():
            if rows:
                break
            continue
        match = pattern.match(line)
        assert match, f"unparseable tree line: {line!r}"
        prefix = match["prefix"]
        assert (len(prefix) - 4) % 4 == 0, f"misaligned tree line: {line!r}"
        rows.append(((len(prefix) - 4) // 4, match["name"], match["code"]))
    return rows


def test_every_error_class_has_a_unique_stable_code() -> None:
    classes = error_classes()
    assert {name: cls.code for name, cls in classes.items()} == STABLE_CODES
    codes = [cls.code for cls in classes.values()]
    assert len(codes) == len(set(codes))
    for cls in classes.values():
        assert "code" in vars(cls), f"{cls.__name__} inherits its parent's code"
        assert re.fullmatch(r"[a-z][a-z_]+", cls.code)


def test_the_docstring_tree_lists_every_class_code_and_parent() -> None:
    rows = drawn_tree()
    classes = error_classes()
    assert [name for _, name, _ in rows].count("TesseraError") == 1
    assert {name for _, name, _ in rows} == set(classes)
    assert len(rows) == len(classes)
    parents: list[str] = []
    for depth, name, code in rows:
        assert code == classes[name].code, name
        parents = parents[:depth]
        if depth == 0:
            assert name == "TesseraError"
        else:
            assert classes[name].__bases__ == (classes[parents[-1]],), name
        parents.append(name)


def test_docs_error_table_lists_every_code() -> None:
    documented = dict(
        (cls, code)
        for code, cls in re.findall(r"^\| `([a-z_]+)` \| `(\w+)` \|", DOCS.read_text(), re.M)
    )
    assert documented == STABLE_CODES


@pytest.mark.parametrize("name", sorted(STABLE_CODES))
def test_errors_have_a_default_detail_and_a_value_free_repr(name: str) -> None:
    cls = error_classes()[name]
    default = cls()
    assert default.detail == cls.default_detail
    assert str(default) == cls.default_detail
    assert default.retry_after is None
    custom = cls("Something specific.", retry_after=2.5)
    assert (str(custom), custom.retry_after) == ("Something specific.", 2.5)
    assert repr(custom) == f"{name}(code={cls.code!r}, detail='Something specific.')"
    assert isinstance(custom, TesseraError)
    assert isinstance(custom, Exception)


def test_families() -> None:
    classes = error_classes()
    for name in ("InvalidCardNumberError", "InvalidExpiryError", "InvalidSecurityCodeError"):
        assert issubclass(classes[name], classes["InvalidCardError"])
        assert issubclass(classes[name], classes["InvalidRequestError"])
    for name in ("CaptureExceedsAuthorizedError", "RefundExceedsCapturedError"):
        assert issubclass(classes[name], classes["IllegalTransitionError"])
    for name in STABLE_CODES:
        if name.startswith("Vault"):
            assert issubclass(classes[name], classes["VaultError"])
        if name.startswith("Connector") or name == "ProviderError":
            assert issubclass(classes[name], classes["ConnectorError"])


# -- the public surface ------------------------------------------------------------------------


def submodules() -> list[ModuleType]:
    return [
        importlib.import_module(f"normalization.{info.name}")
        for info in pkgutil.iter_modules(normalization.__path__)
    ]


def test_all_names_exist_once() -> None:
    names = normalization.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(normalization, name), name


@pytest.mark.parametrize("module", submodules(), ids=lambda m: m.__name__)
def test_submodule_all_is_honest_and_re_exported(module: ModuleType) -> None:
    exported = set(module.__all__)
    for name in exported:
        assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name}"
        assert name in normalization.__all__, f"{name} is not re-exported by normalization"
        assert getattr(normalization, name) is getattr(module, name)
    defined_here = {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    }
    assert defined_here <= exported, f"public but not in __all__: {defined_here - exported}"


def test_the_package_exports_nothing_but_submodule_names() -> None:
    from_submodules = {name for module in submodules() for name in module.__all__}
    assert set(normalization.__all__) == from_submodules


@pytest.mark.parametrize("module", submodules(), ids=lambda m: m.__name__)
def test_normalization_imports_no_other_tessera_package(module: ModuleType) -> None:
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    forbidden = {"gateway", "sdk", "vault", "connectors", "conformance", "tests"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = {(node.module or "").split(".")[0]}
        else:
            continue
        assert not roots & forbidden, f"{module.__name__} imports {roots & forbidden}"
