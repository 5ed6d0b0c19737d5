"""Operator mistakes through the real ``tessera`` CLI: one ``tessera: ...`` line, never a traceback."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from vault.devserver import free_port

from .test_cli import _tessera


def _config(tmp_path: Path, vault_addr: str, extra: str = "") -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "tessera.db"}"\n\n'
        f'[vault]\naddr = "{vault_addr}"\n{extra}'
    )
    return path


def test_a_config_typo_exits_2_with_the_key_named(tmp_path: Path) -> None:
    config = _config(tmp_path, "http://127.0.0.1:1", "[server]\nworkres = 2\n")
    for command in (["serve"], ["audit", "verify"], ["reconcile"]):
        out = _tessera(*command, "--config", str(config))
        assert out.returncode == 2, out.stderr
        assert "[server] workres: unknown key; did you mean 'workers'?" in out.stderr
        assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "extra", "message"),
    [
        (["serve", "--workers", "0"], "", "argument --workers: must be at least 1, not 0"),
        (
            ["serve"],
            'token = "t"\n[payments]\nidempotency_key = "short"\n',
            "[payments] idempotency_key: must be at least 16 bytes",
        ),
        (["vault", "provision"], "", "this command needs a Vault admin token"),
    ],
    ids=["no-workers", "short-idempotency-key", "no-admin-token"],
)
def test_operator_mistakes_exit_2_naming_what_to_fix(
    tmp_path: Path, args: list[str], extra: str, message: str
) -> None:
    """``--workers 0`` used to hang for good (SIGTERM ignored); a short idempotency key failed
    in each worker ("could not open its resources", exit 1); a missing admin token exited 1."""
    config = _config(tmp_path, f"http://127.0.0.1:{free_port()}", extra)
    out = _tessera(*args, "--config", str(config), env={"TESSERA_VAULT_ADMIN_TOKEN": ""})
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr


def test_serve_with_an_unreachable_vault_exits_1(tmp_path: Path) -> None:
    config = _config(tmp_path, f"http://127.0.0.1:{free_port()}", "token = 't'\n")
    out = _tessera("serve", "--config", str(config))
    assert out.returncode == 1
    assert out.stderr.startswith("tessera: Vault at http://127.0.0.1:")
    assert "Traceback" not in out.stderr


def test_merchants_create_without_vault_leaves_no_merchant_behind(tmp_path: Path) -> None:
    config = _config(tmp_path, f"http://127.0.0.1:{free_port()}")
    out = _tessera(
        "merchants", "create", "Acme", "--config", str(config),
        env={"TESSERA_VAULT_ADMIN_TOKEN": "root"},
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "OpenBao is unreachable" in out.stderr and "[vault] addr" in out.stderr
    assert "Traceback" not in out.stderr and "api key" not in out.stdout
    with sqlite3.connect(tmp_path / "tessera.db") as db:
        assert db.execute("SELECT count(*) FROM merchants").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM api_keys").fetchone() == (0,)


def test_database_that_does_not_open_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[database]\nurl = "postgresql://u@127.0.0.1:{free_port()}/x"\n')
    out = _tessera("audit", "verify", "--config", str(config))
    assert out.returncode == 1
    assert out.stderr.startswith("tessera: database error (ConnectionRefusedError")
    assert "Traceback" not in out.stderr


@pytest.mark.openbao
def test_admin_actions_are_audited_and_reported_readably(
    tmp_path: Path, provisioned_vault: Any
) -> None:
    config = _config(
        tmp_path, provisioned_vault.addr, "[payments]\nallow_private_webhook_targets = true\n"
    )
    admin = {"TESSERA_VAULT_ADMIN_TOKEN": provisioned_vault.root_token}
    out = _tessera("merchants", "create", "Acme", "--config", str(config), env=admin)
    assert out.returncode == 0, out.stderr
    merchant = re.search(r"merchant: (mer_[a-z0-9]+)", out.stdout)
    assert merchant
    out = _tessera(
        "merchants", "webhook", merchant.group(1), "http://127.0.0.1:9/hook",
        "--config", str(config),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    out = _tessera("audit", "verify", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("audit log intact: 2 entries checked. Head: 2:"), out.stdout
    head = re.search(r"Head: (2:[0-9a-f]+) ", out.stdout)
    assert head, out.stdout
    with sqlite3.connect(tmp_path / "tessera.db") as db:
        actions = [row[0] for row in db.execute("SELECT action FROM vault_audit_log ORDER BY seq")]
    assert actions == ["merchant.create", "merchant.webhook_set"]
    out = _tessera("audit", "verify", "--anchor", head.group(1), "--config", str(config))
    assert out.returncode == 0 and "anchor 2 found unchanged" in out.stdout, out.stdout
    out = _tessera("audit", "verify", "--anchor", "2-nope", "--config", str(config))
    assert out.returncode == 2 and "--anchor must be SEQ:HASH" in out.stderr, out.stderr

    out = _tessera("keys", "rotate", "--tenant", "mer_nope", "--config", str(config), env=admin)
    assert out.returncode == 1 and "no merchant 'mer_nope'" in out.stderr
    out = _tessera("keys", "rotate", "--config", str(config), env=admin)
    assert out.returncode == 0, out.stderr
    assert f"{merchant.group(1)}: tessera-pan-{merchant.group(1)} v1 -> v2" in out.stdout

    # Someone with DDL rights cuts the last entries off and moves the head back: only the
    # anchor kept outside the database shows it.
    with sqlite3.connect(tmp_path / "tessera.db") as db:
        (trigger,) = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND sql LIKE '%DELETE%'"
            " AND tbl_name = 'vault_audit_log'"
        ).fetchone()
        db.execute(f"DROP TRIGGER {trigger}")
        db.execute("DELETE FROM vault_audit_log WHERE seq >= 2")
        (first_hash,) = db.execute("SELECT hash FROM vault_audit_log WHERE seq = 1").fetchone()
        db.execute("UPDATE vault_audit_head SET seq = 1, hash = ?", (first_hash,))
    assert _tessera("audit", "verify", "--config", str(config)).returncode == 0  # unseen
    out = _tessera("audit", "verify", "--anchor", head.group(1), "--config", str(config))
    assert out.returncode == 1 and "anchor" in out.stdout, out.stdout
