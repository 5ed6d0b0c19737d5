"""``load_settings`` turns operator mistakes into one readable line per problem (ConfigError)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_settings


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=env or {})
    return str(caught.value)


def test_a_typo_names_the_key_and_suggests_the_right_one(tmp_path: Path) -> None:
    message = _load(
        tmp_path, "[server]\nraed_timeout = 10.0\n[connectors.sandbox]\ntset_mode = true\n"
    )
    assert "[server] raed_timeout: unknown key; did you mean 'read_timeout'?" in message
    assert "[connectors.sandbox] tset_mode: unknown key; did you mean 'test_mode'?" in message


def test_a_misspelt_section_is_named(tmp_path: Path) -> None:
    message = _load(tmp_path, "[databse]\nurl = 'sqlite:///x.db'\n")
    assert "databse: unknown key; did you mean 'database'?" in message


def test_a_wrong_type_says_what_was_expected_and_what_came(tmp_path: Path) -> None:
    message = _load(tmp_path, '[server]\nport = "eighty"\n[[routing.rules]]\nconnectors = []\n')
    assert "[server] port: Input should be a valid integer" in message
    assert "(got 'eighty')" in message
    assert "[[routing.rules]] #1 connectors:" in message


def test_routing_to_a_connector_without_a_section_is_named(tmp_path: Path) -> None:
    """It was skipped silently: a typo showed only as payments going elsewhere, or nowhere."""
    message = _load(
        tmp_path,
        '[connectors.sandbox]\ntest_mode = true\n[routing]\ndefault = ["sandbox", "adyen"]\n'
        '[[routing.rules]]\nconnectors = ["sandbx"]\n',
    )
    assert "[routing]: names connector(s) 'adyen', 'sandbx' that have no" in message
    assert "(configured: sandbox)" in message


def test_a_short_idempotency_key_is_named(tmp_path: Path) -> None:
    message = _load(tmp_path, '[payments]\nidempotency_key = "0123456789abcde"\n')
    assert "[payments] idempotency_key: must be at least 16 bytes" in message
    assert "0123456789abcde" not in message


def test_secret_values_are_never_repeated(tmp_path: Path) -> None:
    message = _load(
        tmp_path,
        '[vault]\nsecret_id = 123456789\n[database]\nurl = "mysql://u:hunter2@db/x"\n',
    )
    assert "[vault] secret_id:" in message and "123456789" not in message
    assert "[database] url: must start with sqlite://" in message
    assert "hunter2" not in message


def test_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    message = _load(tmp_path, "", env={"TESSERA_DATABASE_URL": "mysql://db/x"})
    assert "[database] url (set by TESSERA_DATABASE_URL)" in message


def test_unreadable_or_missing_files(tmp_path: Path) -> None:
    assert "is not valid TOML" in _load(tmp_path, "[server\nport = 1\n")
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})


def test_a_valid_file_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[server]\nport = 9000\n[database]\nurl = "postgresql://db/x"\n')
    settings = load_settings(path, env={"TESSERA_VAULT_ADDR": "http://127.0.0.1:1"})
    assert settings.server.port == 9000 and settings.vault.addr == "http://127.0.0.1:1"


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("http://:8200", "with a host"),
        ("ftp://vault:8200", "http:// or https://"),
        ("http://vault:99999", "port from 1 to 65535"),
        ("http://vault:port", "port from 1 to 65535"),
        ("http://vault:0", "port from 1 to 65535"),
        ("http://vault:8200/?x=1", "query or fragment"),
        ("http://vault :8200", "must not contain spaces"),
        ("http://user:pw@vault:8200", "must not carry a user name or password"),
    ],
)
def test_a_vault_address_the_client_cannot_use_is_named(
    tmp_path: Path, addr: str, expected: str
) -> None:
    """The file check was looser than the client's: ``http://:8200`` loaded, then the gateway
    died with a traceback from ``VaultClient``. Both use ``vault.client.check_vault_addr``."""
    message = _load(tmp_path, f'[vault]\naddr = "{addr}"\n')
    assert "[vault] addr:" in message and expected in message


def test_a_bad_vault_address_is_not_repeated(tmp_path: Path) -> None:
    """It may carry a password, as a database URL may."""
    message = _load(tmp_path, '[vault]\naddr = "http://user:hunter2@:8200"\n')
    assert "[vault] addr:" in message and "hunter2" not in message


def test_a_connector_ca_bundle_must_be_a_file_and_reaches_its_runtime(tmp_path: Path) -> None:
    """``ca_bundle`` (a bank's private CA for its server certificate) is checked when the file
    is read, and is what the connector's HTTP client trusts beside the Mozilla bundle."""
    from gateway.connector_pool import runtime_settings

    message = _load(tmp_path, '[connectors.sandbox]\nca_bundle = "/nonexistent/ca.pem"\n')
    assert "[connectors.sandbox] ca_bundle: no file at '/nonexistent/ca.pem'" in message
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    path = tmp_path / "ok.toml"
    path.write_text(f'[connectors.sandbox]\nca_bundle = "{bundle}"\n')
    settings = load_settings(path, env={})
    assert runtime_settings(settings.connectors["sandbox"]).http.ca_bundle == bundle
