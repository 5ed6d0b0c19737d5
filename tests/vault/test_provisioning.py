"""provision() and ensure_tenant_keys() against the real OpenBao: idempotency, and policies that
really separate tokenize, reveal and admin."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import hvac
import pytest

from normalization.errors import (
    VaultNotFoundError,
    VaultPermissionDeniedError,
    VaultUnavailableError,
)
from tests.conftest import ProvisionedVault, free_port
from vault.client import VaultClient
from vault.devserver import DevServer
from vault.provisioning import (
    ADMIN_POLICY,
    REVEAL_POLICY,
    TOKENIZE_POLICY,
    TenantKeys,
    ensure_tenant_keys,
    fingerprint_key_name,
    pan_key_name,
    policy_documents,
    provision,
    validate_tenant_id,
)


@pytest.fixture(scope="module")
def tenant(provisioned_vault: ProvisionedVault) -> TenantKeys:
    return ensure_tenant_keys(
        provisioned_vault.addr, provisioned_vault.root_token, f"prov_{secrets.token_hex(4)}"
    )


@pytest.fixture
def root_hvac(provisioned_vault: ProvisionedVault) -> Iterator[hvac.Client]:
    client = hvac.Client(url=provisioned_vault.addr, token=provisioned_vault.root_token)
    yield client
    client.adapter.close()


def test_provision_is_idempotent(private_openbao: DevServer) -> None:
    first = provision(private_openbao.addr, private_openbao.root_token)
    second = provision(private_openbao.addr, private_openbao.root_token)
    assert first.gateway_role_id == second.gateway_role_id
    assert first.admin_role_id == second.admin_role_id
    assert first.gateway_secret_id != second.gateway_secret_id  # fresh each run
    assert first.gateway_secret_id not in repr(first)

    root = hvac.Client(url=private_openbao.addr, token=private_openbao.root_token)
    try:
        mounts = root.sys.list_mounted_secrets_engines()["data"]
        assert mounts["transit/"]["type"] == "transit"
        assert mounts["secret/"]["options"]["version"] == "2"
        policies = root.sys.list_acl_policies()["data"]["keys"]
        assert {TOKENIZE_POLICY, REVEAL_POLICY, ADMIN_POLICY} <= set(policies)
        role = root.auth.approle.read_role("tessera-gateway")["data"]
        assert set(role["token_policies"]) == {TOKENIZE_POLICY, REVEAL_POLICY}
        # Both generations of secret ids log in.
        for result in (first, second):
            credentials = result.gateway_credentials()
            login = root.auth.approle.login(credentials.role_id, credentials.secret_id)
            assert login["auth"]["client_token"]
    finally:
        root.adapter.close()


def test_provision_upgrades_a_kv_v1_mount(private_openbao: DevServer) -> None:
    root = hvac.Client(url=private_openbao.addr, token=private_openbao.root_token)
    try:
        root.sys.enable_secrets_engine("kv", path="legacy", options={"version": "1"})
        provision(private_openbao.addr, private_openbao.root_token, kv_mount="legacy")
        mounts = root.sys.list_mounted_secrets_engines()["data"]
        assert mounts["legacy/"]["options"]["version"] == "2"
    finally:
        root.adapter.close()


def test_tenant_keys_are_idempotent_and_typed(
    provisioned_vault: ProvisionedVault, root_hvac: hvac.Client
) -> None:
    tenant_id = f"t_{secrets.token_hex(4)}"
    first = ensure_tenant_keys(provisioned_vault.addr, provisioned_vault.root_token, tenant_id)
    second = ensure_tenant_keys(provisioned_vault.addr, provisioned_vault.root_token, tenant_id)
    assert (
        first
        == second
        == TenantKeys(tenant_id, f"tessera-pan-{tenant_id}", f"tessera-fp-{tenant_id}")
    )
    pan = root_hvac.secrets.transit.read_key(first.pan_key)["data"]
    fingerprint = root_hvac.secrets.transit.read_key(first.fingerprint_key)["data"]
    assert pan["type"] == "aes256-gcm96" and not pan["exportable"]
    assert fingerprint["type"] == "hmac" and not fingerprint["exportable"]
    assert not fingerprint["supports_encryption"] and not fingerprint["supports_decryption"]
    assert pan["latest_version"] == 1  # the second run did not rotate or recreate anything


def test_an_exportable_key_is_refused(
    provisioned_vault: ProvisionedVault, root_hvac: hvac.Client
) -> None:
    tenant_id = f"exp_{secrets.token_hex(4)}"
    root_hvac.secrets.transit.create_key(pan_key_name(tenant_id), exportable=True)
    with pytest.raises(Exception, match="exportable"):
        ensure_tenant_keys(provisioned_vault.addr, provisioned_vault.root_token, tenant_id)


@pytest.mark.parametrize(
    "tenant_id",
    [
        "",
        "A",
        "acme-corp",
        "acme/../x",
        "a" * 65,
        "٣",
        "acme ",
        "\uff41\uff43\uff4d\uff45",
        "tenant\n",
    ],
)
def test_invalid_tenant_ids_are_rejected(tenant_id: str) -> None:
    with pytest.raises(ValueError, match="tenant id"):
        validate_tenant_id(tenant_id)
    with pytest.raises(ValueError):
        pan_key_name(tenant_id)
    with pytest.raises(ValueError):
        fingerprint_key_name(tenant_id)


def test_key_names() -> None:
    assert pan_key_name("acme_1") == "tessera-pan-acme_1"
    assert fingerprint_key_name("a" * 64) == "tessera-fp-" + "a" * 64


def test_policies_follow_the_mounts() -> None:
    documents = policy_documents("tr", "kv")
    assert 'path "tr/encrypt/tessera-*"' in documents[TOKENIZE_POLICY]
    assert "decrypt" not in documents[TOKENIZE_POLICY]
    assert 'path "kv/data/tessera/connectors/*"' in documents[REVEAL_POLICY]
    assert "decrypt" not in documents[ADMIN_POLICY]


def test_errors_are_mapped(provisioned_vault: ProvisionedVault) -> None:
    with pytest.raises(VaultPermissionDeniedError):
        provision(provisioned_vault.addr, "not-a-token")
    with pytest.raises(VaultUnavailableError):
        provision(f"http://127.0.0.1:{free_port()}", "t")


# -- what each role may do ------------------------------------------------------------------------


async def test_gateway_role_tokenizes_and_reveals_but_administers_nothing(
    provisioned_vault: ProvisionedVault, tenant: TenantKeys
) -> None:
    async with VaultClient(
        provisioned_vault.addr, token=provisioned_vault.root_token
    ) as root_client:
        await root_client.kv_write("tessera/connectors/sandbox", {"api_key": "k"})
    credentials = provisioned_vault.result.gateway_credentials()
    async with VaultClient(provisioned_vault.addr, approle=credentials) as gateway:
        (ciphertext,) = await gateway.transit_encrypt(tenant.pan_key, [b"pan"])
        (fingerprint,) = await gateway.transit_hmac(tenant.fingerprint_key, [b"pan"])
        assert isinstance(ciphertext, str) and isinstance(fingerprint, str)
        assert await gateway.transit_decrypt(tenant.pan_key, [ciphertext]) == [b"pan"]
        assert await gateway.kv_read("tessera/connectors/sandbox") == {"api_key": "k"}
        for forbidden in (
            gateway.transit_rotate(tenant.pan_key),
            gateway.transit_read_key(tenant.pan_key),
            gateway.transit_rewrap(tenant.pan_key, [ciphertext]),
            gateway.kv_write("tessera/connectors/sandbox", {"api_key": "stolen"}),
            gateway.kv_read("other/secret"),
            # No "create": encrypting under a key that does not exist must not make one.
            gateway.transit_encrypt("tessera-pan-nobody_yet", [b"x"]),
        ):
            with pytest.raises(VaultPermissionDeniedError):
                await forbidden
        assert gateway.logins == 1


async def test_tokenize_policy_cannot_reveal(
    provisioned_vault: ProvisionedVault, root_hvac: hvac.Client, tenant: TenantKeys
) -> None:
    token = root_hvac.auth.token.create(policies=[TOKENIZE_POLICY], ttl="5m")["auth"]
    async with VaultClient(provisioned_vault.addr, token=token["client_token"]) as client:
        (ciphertext,) = await client.transit_encrypt(tenant.pan_key, [b"pan"])
        with pytest.raises(VaultPermissionDeniedError):
            await client.transit_decrypt(tenant.pan_key, [str(ciphertext)])
        with pytest.raises(VaultPermissionDeniedError):
            await client.kv_read("tessera/connectors/sandbox")


async def test_admin_role_manages_keys_but_cannot_reveal(
    provisioned_vault: ProvisionedVault, tenant: TenantKeys
) -> None:
    credentials = provisioned_vault.result.admin_credentials()
    async with (
        VaultClient(provisioned_vault.addr, approle=credentials) as admin,
        VaultClient(provisioned_vault.addr, token=provisioned_vault.root_token) as root,
    ):
        (ciphertext,) = await root.transit_encrypt(tenant.pan_key, [b"pan"])
        key = f"tessera-pan-adm_{secrets.token_hex(3)}"
        await admin.transit_create_key(key)
        await admin.transit_rotate(key)
        assert (await admin.transit_read_key(key))["latest_version"] == 2
        (rewrapped,) = await admin.transit_rewrap(tenant.pan_key, [str(ciphertext)])
        assert isinstance(rewrapped, str)
        await admin.kv_write("tessera/connectors/admin_made", {"k": "v"})
        with pytest.raises(VaultPermissionDeniedError):
            await admin.transit_decrypt(tenant.pan_key, [str(ciphertext)])
        with pytest.raises((VaultPermissionDeniedError, VaultNotFoundError)):
            await admin.transit_create_key("not-tessera-key")
