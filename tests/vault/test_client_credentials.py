"""``VaultClient.check_credentials`` against the real OpenBao: accepted, refused, unreachable.

Used by ``tessera serve``'s start-up check and by ``/readyz``; it must tell "Vault refuses the
gateway's credentials" (``VaultPermissionDeniedError``) from everything else, for a static token
and for AppRole (whose dead token is replaced by one fresh login, as for any call).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator

import hvac
import pytest

from normalization.errors import VaultPermissionDeniedError, VaultUnavailableError
from tests.conftest import ProvisionedVault, free_port
from vault.client import AppRoleCredentials, VaultClient


@pytest.fixture
def root_hvac(provisioned_vault: ProvisionedVault) -> Iterator[hvac.Client]:
    client = hvac.Client(url=provisioned_vault.addr, token=provisioned_vault.root_token)
    yield client
    client.adapter.close()


@contextlib.asynccontextmanager
async def _approle_client(
    vault: ProvisionedVault, root: hvac.Client, **role: object
) -> AsyncIterator[tuple[VaultClient, AppRoleCredentials, str]]:
    """A client of a role of this test's own (tokenize policy), its credentials and role name;
    its credentials already checked once (so it holds a token)."""
    name = f"check_{secrets.token_hex(3)}"
    root.auth.approle.create_or_update_approle(name, token_policies=["tessera-tokenize"], **role)
    role_id = root.auth.approle.read_role_id(name)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id(name)["data"]["secret_id"]
    credentials = AppRoleCredentials(role_id, secret_id)
    async with VaultClient(vault.addr, approle=credentials) as client:
        await client.check_credentials()
        yield client, credentials, name


def _revoke_token(root: hvac.Client, client: VaultClient) -> None:
    assert client.token is not None
    root.auth.token.revoke(client.token)


async def test_a_live_static_token_is_accepted_and_a_revoked_one_refused(
    provisioned_vault: ProvisionedVault, root_hvac: hvac.Client
) -> None:
    token = root_hvac.auth.token.create(policies=["tessera-tokenize"], ttl="10m")["auth"][
        "client_token"
    ]
    async with VaultClient(provisioned_vault.addr, token=token) as client:
        await client.check_credentials()
        root_hvac.auth.token.revoke(token)
        with pytest.raises(VaultPermissionDeniedError) as caught:
            await client.check_credentials()
        assert token not in str(caught.value)


async def test_approle_logs_in_then_only_looks_up(
    provisioned_vault: ProvisionedVault, root_hvac: hvac.Client
) -> None:
    async with _approle_client(provisioned_vault, root_hvac) as (client, _, _):
        await client.check_credentials()
        assert client.logins == 1


async def test_approle_with_a_revoked_token_logs_in_again(
    provisioned_vault: ProvisionedVault, root_hvac: hvac.Client
) -> None:
    async with _approle_client(provisioned_vault, root_hvac) as (client, _, _):
        _revoke_token(root_hvac, client)
        await client.check_credentials()
        assert client.logins == 2


async def test_approle_whose_secret_id_is_gone_is_refused_once_its_token_is(
    provisioned_vault: ProvisionedVault, root_hvac: hvac.Client
) -> None:
    async with _approle_client(provisioned_vault, root_hvac) as (client, credentials, role):
        root_hvac.auth.approle.destroy_secret_id(role, credentials.secret_id)
        # The token it holds still works: so does the gateway, for now.
        await client.check_credentials()
        _revoke_token(root_hvac, client)
        with pytest.raises(VaultPermissionDeniedError) as caught:
            await client.check_credentials()
        assert credentials.secret_id not in str(caught.value)


async def test_bad_approle_credentials_are_refused(provisioned_vault: ProvisionedVault) -> None:
    bad = AppRoleCredentials(provisioned_vault.result.gateway_role_id, "not-the-secret")
    async with VaultClient(provisioned_vault.addr, approle=bad) as client:
        with pytest.raises(VaultPermissionDeniedError):
            await client.check_credentials()
        assert client.logins == 0


async def test_approle_token_without_lookup_self_is_still_accepted(
    provisioned_vault: ProvisionedVault, root_hvac: hvac.Client
) -> None:
    """A role whose tokens lack the ``default`` policy cannot look itself up: the login that
    follows the refused lookup decides, and it succeeds."""
    async with _approle_client(provisioned_vault, root_hvac, token_no_default_policy=True) as (
        client,
        _,
        _,
    ):
        assert client.logins == 2


async def test_unreachable_vault_is_not_a_refusal() -> None:
    async with VaultClient(f"http://127.0.0.1:{free_port()}", token="t", timeout=1) as client:
        with pytest.raises(VaultUnavailableError):
            await client.check_credentials()


def _role(root: hvac.Client) -> tuple[str, str]:
    """A role of the test's own (a lockout must not reach the shared gateway role): its id and a
    good secret id."""
    name = f"lock_{secrets.token_hex(3)}"
    root.auth.approle.create_or_update_approle(name, token_policies=["tessera-tokenize"])
    role_id = root.auth.approle.read_role_id(name)["data"]["role_id"]
    return role_id, root.auth.approle.generate_secret_id(name)["data"]["secret_id"]


async def test_a_wrong_secret_id_does_not_lock_the_role_out_for_everyone(
    provisioned_vault: ProvisionedVault, root_hvac: hvac.Client
) -> None:
    """OpenBao locks a role id out after 5 failed logins. A process with a wrong secret id,
    asked 20 times, logs in once and answers the rest with that refusal and when it will try
    again; a process sharing the role id with the right secret id still gets in."""
    role_id, secret_id = _role(root_hvac)
    bad = AppRoleCredentials(role_id, "not-the-secret")
    async with VaultClient(provisioned_vault.addr, approle=bad) as client:
        for _ in range(20):
            with pytest.raises(VaultPermissionDeniedError) as caught:
                await client.check_credentials()
            assert "role id or secret id is wrong" in caught.value.detail
            assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 30
        assert client.login_attempts == 1
    good = AppRoleCredentials(role_id, secret_id)
    async with VaultClient(provisioned_vault.addr, approle=good) as client:
        await client.check_credentials()
        assert client.logins == 1


async def test_a_locked_out_role_is_told_from_wrong_credentials(
    provisioned_vault: ProvisionedVault, root_hvac: hvac.Client
) -> None:
    role_id, secret_id = _role(root_hvac)
    for _ in range(5):  # OpenBao's default lockout threshold
        with contextlib.suppress(hvac.exceptions.InvalidRequest):
            root_hvac.auth.approle.login(role_id, "not-the-secret", use_token=False)
    # The right secret id, refused: the role is locked out, and the error says so.
    async with VaultClient(
        provisioned_vault.addr, approle=AppRoleCredentials(role_id, secret_id)
    ) as client:
        with pytest.raises(VaultPermissionDeniedError) as caught:
            await client.check_credentials()
        assert "locked out" in caught.value.detail
        assert caught.value.retry_after == 60
        assert secret_id not in str(caught.value)
