"""VaultClient against the real OpenBao dev server: transit, KV, errors, AppRole, sealing."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Iterator

import hvac
import pytest

from normalization.errors import (
    VaultError,
    VaultNotFoundError,
    VaultPermissionDeniedError,
    VaultSealedError,
    VaultUnavailableError,
)
from tests.conftest import ProvisionedVault, free_port
from vault.client import AppRoleCredentials, VaultClient, safe_vault_message
from vault.devserver import DevServer
from vault.provisioning import TenantKeys, ensure_tenant_keys, provision

# A Luhn-valid test PAN that must never surface in an error.
CANARY_PAN = "4111111111111111"


@pytest.fixture(scope="module")
def tenant(provisioned_vault: ProvisionedVault) -> TenantKeys:
    """A tenant of this module's own, with its PAN and fingerprint keys."""
    return ensure_tenant_keys(
        provisioned_vault.addr, provisioned_vault.root_token, f"client_{secrets.token_hex(4)}"
    )


@pytest.fixture
def root_hvac(provisioned_vault: ProvisionedVault) -> Iterator[hvac.Client]:
    client = hvac.Client(url=provisioned_vault.addr, token=provisioned_vault.root_token)
    yield client
    client.adapter.close()


def _token_with(root: hvac.Client, *policies: str) -> str:
    reply = root.auth.token.create(policies=list(policies), ttl="10m")
    return str(reply["auth"]["client_token"])


# -- transit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 250])
async def test_encrypt_decrypt_round_trip(
    vault_client: VaultClient, tenant: TenantKeys, size: int
) -> None:
    plaintexts = [f"pan-{i}".encode() for i in range(size)]
    ciphertexts = await vault_client.transit_encrypt(tenant.pan_key, plaintexts)
    assert len(ciphertexts) == size
    assert all(isinstance(c, str) and c.startswith("vault:v1:") for c in ciphertexts)
    decrypted = await vault_client.transit_decrypt(tenant.pan_key, [str(c) for c in ciphertexts])
    assert decrypted == plaintexts


async def test_empty_batch_makes_no_call(vault_client: VaultClient, tenant: TenantKeys) -> None:
    assert await vault_client.transit_encrypt(tenant.pan_key, []) == []


async def test_hmac_is_keyed_and_deterministic(
    vault_client: VaultClient, tenant: TenantKeys
) -> None:
    first = await vault_client.transit_hmac(tenant.fingerprint_key, [b"a", b"b", b"a"])
    assert first[0] == first[2] != first[1]
    assert all(isinstance(h, str) and h.startswith("vault:v1:") for h in first)
    other = ensure_tenant_keys(
        vault_client.addr, str(vault_client.token), f"other_{secrets.token_hex(4)}"
    )
    (elsewhere,) = await vault_client.transit_hmac(other.fingerprint_key, [b"a"])
    assert elsewhere != first[0]


async def test_one_bad_ciphertext_fails_only_its_item(
    vault_client: VaultClient, tenant: TenantKeys
) -> None:
    good = await vault_client.transit_encrypt(tenant.pan_key, [b"one", b"two"])
    results = await vault_client.transit_decrypt(
        tenant.pan_key, [str(good[0]), "not-a-ciphertext", str(good[1])]
    )
    assert results[0] == b"one"
    assert isinstance(results[1], VaultError)
    assert results[2] == b"two"


async def test_item_errors_never_echo_the_input(
    vault_client: VaultClient, tenant: TenantKeys
) -> None:
    disguised = "vault:v1:" + base64.b64encode(CANARY_PAN.encode()).decode()
    (result,) = await vault_client.transit_decrypt(tenant.pan_key, [disguised])
    assert isinstance(result, VaultError)
    text = f"{result} {result!r}"
    assert CANARY_PAN not in text
    assert base64.b64encode(CANARY_PAN.encode()).decode() not in text


def test_safe_vault_message_redacts_data_like_runs() -> None:
    message = f"bad input {CANARY_PAN} / {base64.b64encode(b'secret-plaintext!').decode()}"
    scrubbed = safe_vault_message(message)
    assert CANARY_PAN not in scrubbed
    assert "c2VjcmV0" not in scrubbed
    assert "bad input" in scrubbed


async def test_rotate_rewrap_and_min_decryption_version(vault_client: VaultClient) -> None:
    key = f"tessera-pan-rot_{secrets.token_hex(4)}"
    await vault_client.transit_create_key(key)
    await vault_client.transit_create_key(key)  # existing key: no error
    (old,) = await vault_client.transit_encrypt(key, [b"card"])
    await vault_client.transit_rotate(key)
    assert (await vault_client.transit_read_key(key))["latest_version"] == 2
    (new,) = await vault_client.transit_rewrap(key, [str(old)])
    assert str(new).startswith("vault:v2:")
    await vault_client.transit_configure_key(key, min_decryption_version=2)
    assert (await vault_client.transit_read_key(key))["min_decryption_version"] == 2
    after = await vault_client.transit_decrypt(key, [str(new), str(old)])
    assert after[0] == b"card"
    assert isinstance(after[1], VaultError)  # v1 is retired: only that item fails


async def test_hmac_with_an_older_key_version(vault_client: VaultClient) -> None:
    key = f"tessera-fp-ver_{secrets.token_hex(4)}"
    await vault_client.transit_create_key(key, key_type="hmac")
    (v1,) = await vault_client.transit_hmac(key, [b"x"])
    await vault_client.transit_rotate(key)
    (v2,) = await vault_client.transit_hmac(key, [b"x"])
    (v1_again,) = await vault_client.transit_hmac(key, [b"x"], key_version=1)
    assert v1 == v1_again != v2


async def test_datakey_plaintext_matches_its_ciphertext(
    vault_client: VaultClient, tenant: TenantKeys
) -> None:
    plaintext, ciphertext = await vault_client.transit_datakey(tenant.pan_key)
    assert len(plaintext) == 32
    assert await vault_client.transit_decrypt(tenant.pan_key, [ciphertext]) == [plaintext]


async def test_missing_key_is_not_found(vault_client: VaultClient) -> None:
    with pytest.raises(VaultNotFoundError):
        await vault_client.transit_decrypt("tessera-pan-nobody", ["vault:v1:AAAA"])
    with pytest.raises(VaultNotFoundError):
        await vault_client.transit_read_key("tessera-pan-nobody")


# -- KV v2 and health ---------------------------------------------------------------------------


async def test_kv_write_then_read(vault_client: VaultClient, tenant: TenantKeys) -> None:
    path = f"tessera/connectors/{tenant.tenant_id}"
    assert await vault_client.kv_write(path, {"api_key": "sk_test_1"}) == 1
    assert await vault_client.kv_write(path, {"api_key": "sk_test_2"}) == 2
    assert await vault_client.kv_read(path) == {"api_key": "sk_test_2"}
    with pytest.raises(VaultNotFoundError):
        await vault_client.kv_read("tessera/connectors/nobody-here")


async def test_health(vault_client: VaultClient) -> None:
    health = await vault_client.health()
    assert health.initialized and not health.sealed and not health.standby
    assert health.ready
    assert health.version.startswith("2.")


# -- failures -----------------------------------------------------------------------------------


async def test_unreachable_vault_fails_fast() -> None:
    async with VaultClient(f"http://127.0.0.1:{free_port()}", token="t") as client:
        started = time.monotonic()
        with pytest.raises(VaultUnavailableError) as caught:
            await client.transit_encrypt("tessera-pan-x", [CANARY_PAN.encode()])
        assert time.monotonic() - started < 1.0
        assert caught.value.retry_after == 1
        assert caught.value.__cause__ is None
        assert CANARY_PAN not in str(caught.value)
        with pytest.raises(VaultUnavailableError):
            await client.health()


async def test_sealed_vault(private_openbao: DevServer) -> None:
    provision(private_openbao.addr, private_openbao.root_token)
    async with VaultClient(private_openbao.addr, token=private_openbao.root_token) as client:
        await client.transit_create_key("tessera-pan-s")
        private_openbao.seal()
        assert (await client.health()).sealed
        with pytest.raises(VaultSealedError) as caught:
            await client.transit_encrypt("tessera-pan-s", [b"x"])
        assert caught.value.retry_after is not None
        private_openbao.unseal()
        health = await client.health()
        assert not health.sealed and health.ready
        (ciphertext,) = await client.transit_encrypt("tessera-pan-s", [b"x"])
        assert isinstance(ciphertext, str)


async def test_tokenize_only_token_cannot_decrypt(
    provisioned_vault: ProvisionedVault, root_hvac: hvac.Client, tenant: TenantKeys
) -> None:
    token = _token_with(root_hvac, "tessera-tokenize")
    async with VaultClient(provisioned_vault.addr, token=token) as client:
        (ciphertext,) = await client.transit_encrypt(tenant.pan_key, [b"x"])
        (fingerprint,) = await client.transit_hmac(tenant.fingerprint_key, [b"x"])
        assert isinstance(ciphertext, str) and isinstance(fingerprint, str)
        with pytest.raises(VaultPermissionDeniedError):
            await client.transit_decrypt(tenant.pan_key, [ciphertext])


# -- AppRole ------------------------------------------------------------------------------------


async def test_approle_relogs_in_once_after_revocation(
    provisioned_vault: ProvisionedVault, root_hvac: hvac.Client, tenant: TenantKeys
) -> None:
    credentials = provisioned_vault.result.gateway_credentials()
    async with VaultClient(provisioned_vault.addr, approle=credentials) as client:
        assert client.token is None  # lazy: no login before the first call
        (ciphertext,) = await client.transit_encrypt(tenant.pan_key, [b"x"])
        assert client.logins == 1
        first_token = client.token
        assert first_token is not None
        root_hvac.auth.token.revoke(first_token)

        # 20 callers hit the dead token together: one shared re-login, every call succeeds.
        results = await asyncio.gather(
            *(client.transit_decrypt(tenant.pan_key, [str(ciphertext)]) for _ in range(20))
        )
        assert results == [[b"x"]] * 20
        assert client.logins == 2
        assert client.token != first_token


async def test_approle_policy_denial_does_not_relogin(
    provisioned_vault: ProvisionedVault, tenant: TenantKeys
) -> None:
    credentials = provisioned_vault.result.gateway_credentials()
    async with VaultClient(provisioned_vault.addr, approle=credentials) as client:
        with pytest.raises(VaultPermissionDeniedError):
            await client.transit_rotate(tenant.pan_key)  # admin-only
        with pytest.raises(VaultPermissionDeniedError):
            await client.transit_rotate(tenant.pan_key)
        assert client.logins == 1


async def test_approle_logs_in_again_before_the_ttl_runs_out(
    provisioned_vault: ProvisionedVault, root_hvac: hvac.Client, tenant: TenantKeys
) -> None:
    role = f"short_{secrets.token_hex(3)}"
    root_hvac.auth.approle.create_or_update_approle(
        role, token_policies=["tessera-tokenize"], token_ttl="2s", token_max_ttl="2s"
    )
    role_id = root_hvac.auth.approle.read_role_id(role)["data"]["role_id"]
    secret_id = root_hvac.auth.approle.generate_secret_id(role)["data"]["secret_id"]
    async with VaultClient(
        provisioned_vault.addr, approle=AppRoleCredentials(role_id, secret_id)
    ) as client:
        await client.transit_encrypt(tenant.pan_key, [b"x"])
        await asyncio.sleep(1.2)  # past the renewal point (TTL minus a margin of half of it)
        await client.transit_encrypt(tenant.pan_key, [b"x"])
        assert client.logins == 2


async def test_bad_approle_credentials_are_refused(provisioned_vault: ProvisionedVault) -> None:
    bad = AppRoleCredentials(provisioned_vault.result.gateway_role_id, "not-the-secret")
    assert "not-the-secret" not in repr(bad)
    async with VaultClient(provisioned_vault.addr, approle=bad) as client:
        with pytest.raises(VaultPermissionDeniedError):
            await client.transit_encrypt("tessera-pan-x", [b"x"])
        assert client.logins == 0


def test_client_needs_credentials() -> None:
    with pytest.raises(ValueError, match="token or AppRole"):
        VaultClient("http://127.0.0.1:1")
