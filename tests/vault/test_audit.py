"""The hash-chained audit log on both backends: chaining, tamper detection, concurrency."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from normalization import InvalidRequestError
from tests.vault.canary import new_canary
from tests.vault.conftest import Database
from vault.audit import GENESIS_HASH, AuditAnchor, AuditLog, contains_card_number
from vault.database import open_database


async def _fill(log: AuditLog, count: int) -> None:
    for index in range(count):
        await log.append(
            actor=f"admin:{index}",
            action="token.reveal",
            tenant="acme",
            target=f"tok_{index:a>24}",
            purpose="egress:sandbox:authorize",
        )


async def _tamper(db: Database, *statements: str | tuple[str, str]) -> None:
    """Run ``statements`` (SQL, or SQL and one argument) as an attacker with DDL rights, that
    is with the append-only guards off."""
    if db.dialect == "sqlite":
        await db.execute("DROP TRIGGER vault_audit_log_no_update")
        await db.execute("DROP TRIGGER vault_audit_log_no_delete")
    async with db.transaction() as tx:
        if db.dialect == "postgresql":
            await tx.execute("ALTER TABLE vault_audit_log DISABLE TRIGGER USER")
        for statement in statements:
            sql, *args = (statement,) if isinstance(statement, str) else statement
            await tx.execute(sql, *args)
        if db.dialect == "postgresql":
            await tx.execute("ALTER TABLE vault_audit_log ENABLE TRIGGER USER")


async def test_chain_links_and_verifies(audit: AuditLog) -> None:
    first = await audit.append(actor="admin:1", action="keys.rotate", tenant="acme")
    second = await audit.append(
        actor="svc:gateway", action="token.reveal", target="tok_x", purpose="egress"
    )
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert first.computed_hash() == first.hash
    assert await audit.head() == AuditAnchor(2, second.hash)
    result = await audit.verify()
    assert result.ok and result.entries_checked == 2


async def test_empty_log_verifies(audit: AuditLog) -> None:
    result = await audit.verify()
    assert result.ok and result.entries_checked == 0


async def test_migrate_is_idempotent(audit: AuditLog) -> None:
    await audit.migrate()
    await _fill(audit, 1)
    await audit.migrate()
    assert (await audit.verify()).ok


async def test_verify_pages_through_long_chains(audit: AuditLog) -> None:
    await _fill(audit, 25)
    result = await audit.verify(page_size=7)
    assert result.ok and result.entries_checked == 25


async def test_the_log_refuses_update_and_delete(audit: AuditLog, database: Database) -> None:
    await _fill(audit, 2)
    with pytest.raises(Exception, match="append-only"):
        await database.execute("UPDATE vault_audit_log SET actor = 'x' WHERE seq = 1")
    with pytest.raises(Exception, match="append-only"):
        await database.execute("DELETE FROM vault_audit_log WHERE seq = 2")
    assert (await audit.verify()).ok


async def test_edited_entry_is_found(audit: AuditLog, database: Database) -> None:
    await _fill(audit, 6)
    await _tamper(database, "UPDATE vault_audit_log SET purpose = 'nothing to see' WHERE seq = 4")
    result = await audit.verify()
    assert not result.ok
    assert result.first_bad_seq == 4
    assert result.entries_checked == 3
    assert "edited" in (result.reason or "")


async def test_edit_with_recomputed_hash_breaks_the_next_link(
    audit: AuditLog, database: Database
) -> None:
    await _fill(audit, 6)
    entry = (await audit.entries(after_seq=2, limit=1))[0]
    forged_hash = dataclasses.replace(entry, actor="someone-else").computed_hash()
    await _tamper(
        database,
        ("UPDATE vault_audit_log SET actor = 'someone-else', hash = $1 WHERE seq = 3", forged_hash),
    )
    result = await audit.verify()
    assert not result.ok and result.first_bad_seq == 4
    assert "prev_hash" in (result.reason or "")


async def test_removed_entry_is_found(audit: AuditLog, database: Database) -> None:
    await _fill(audit, 6)
    await _tamper(database, "DELETE FROM vault_audit_log WHERE seq = 3")
    result = await audit.verify()
    assert not result.ok and result.first_bad_seq == 3
    assert "missing" in (result.reason or "")


async def test_removed_tail_is_found(audit: AuditLog, database: Database) -> None:
    await _fill(audit, 6)
    await _tamper(database, "DELETE FROM vault_audit_log WHERE seq >= 5")
    result = await audit.verify()
    assert not result.ok and result.first_bad_seq == 5


async def test_swapped_entries_are_found(audit: AuditLog, database: Database) -> None:
    await _fill(audit, 6)
    await _tamper(
        database,
        "UPDATE vault_audit_log SET seq = -1 WHERE seq = 3",
        "UPDATE vault_audit_log SET seq = 3 WHERE seq = 4",
        "UPDATE vault_audit_log SET seq = 4 WHERE seq = -1",
    )
    result = await audit.verify()
    assert not result.ok and result.first_bad_seq == 3


async def test_anchor_catches_a_consistently_rewritten_chain(audit: AuditLog) -> None:
    await _fill(audit, 3)
    anchor = await audit.head()
    await _fill(audit, 2)
    assert (await audit.verify(anchor=anchor)).ok
    wrong = AuditAnchor(anchor.seq, "f" * 64)
    result = await audit.verify(anchor=wrong)
    assert not result.ok and result.first_bad_seq == 3
    beyond = AuditAnchor(99, anchor.hash)
    assert not (await audit.verify(anchor=beyond)).ok


async def test_card_numbers_are_refused(audit: AuditLog) -> None:
    canary = new_canary()
    spaced = " ".join(canary.pan[i : i + 4] for i in range(0, 16, 4))
    for value in (canary.pan, spaced, f"card {canary.pan[:8]}-{canary.pan[8:]}"):
        with pytest.raises(InvalidRequestError) as caught:
            await audit.append(actor="admin", action="token.reveal", purpose=value)
        assert canary.pan not in str(caught.value)
    # Numeric tokens fail Luhn, so they are fine as targets.
    await audit.append(actor="admin", action="token.delete", target="4242424242424241")
    assert (await audit.verify()).entries_checked == 1


def test_contains_card_number() -> None:
    assert contains_card_number("4242424242424242")
    assert contains_card_number("x 4242 4242 4242 4242 y")
    assert contains_card_number("4242-4242-4242-4242")
    assert contains_card_number("1" * 25)  # too long to be sure: refused
    assert not contains_card_number("4242424242424241")
    assert not contains_card_number("tok_abc; rewrapped 1200 rows; v1 to v2")


async def test_concurrent_appends_keep_one_chain(audit: AuditLog) -> None:
    await asyncio.gather(
        *(audit.append(actor=f"a{i}", action="token.reveal", target=f"t{i}") for i in range(40))
    )
    result = await audit.verify()
    assert result.ok and result.entries_checked == 40


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_processes_appending_do_not_fork_the_chain(
    audit: AuditLog, database_url: str
) -> None:
    """Two independent pools (as two gateway processes would have) append at once."""
    other_db = await open_database(database_url)
    try:
        other = AuditLog(other_db)
        await other.migrate()

        async def burst(log: AuditLog, name: str) -> None:
            for index in range(30):
                await log.append(actor=name, action="token.reveal", target=f"{name}-{index}")

        await asyncio.gather(*(burst(audit, f"a{n}") for n in range(3)),
                             *(burst(other, f"b{n}") for n in range(3)))  # fmt: skip
    finally:
        await other_db.close()
    result = await audit.verify()
    assert result.ok and result.entries_checked == 180


async def test_an_entry_commits_or_rolls_back_with_the_callers_transaction(
    audit: AuditLog, database: Database
) -> None:
    await audit.append(actor="admin", action="merchant.create", target="m_1")
    with pytest.raises(RuntimeError, match="refund failed"):
        async with database.transaction() as tx:
            await audit.append(actor="merchant:m_1", action="payment.refund", tx=tx)
            raise RuntimeError("refund failed")
    assert (await audit.head()).seq == 1  # rolled back with the action it recorded
    async with database.transaction() as tx:
        entry = await audit.append(actor="merchant:m_1", action="payment.refund", tx=tx)
    assert entry.seq == 2 and (await audit.head()).hash == entry.hash
    result = await audit.verify()
    assert result.ok and result.entries_checked == 2
