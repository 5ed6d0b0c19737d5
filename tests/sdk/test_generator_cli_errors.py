"""``tessera connector new`` refusing its arguments: exit 2 and one ``tessera:`` line, like the
CLI's other argument errors; a project that cannot be written: exit 1, no traceback, nothing
left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from sdk.generator import generate_connector


def _new(tmp_path: Path, name: str, *more: str) -> list[str]:
    return ["connector", "new", name, "--category", "card-acquirer", "--path", str(tmp_path), *more]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("9lives", "'9lives' is not a usable connector name: use 2-20 ASCII letters"),
        ("x", "'x' is not a usable connector name"),
        ("acme.pay", "'acme.pay' is not a usable connector name"),
        ("Sandbox", "A connector 'sandbox' is already installed (tessera connector list)"),
    ],
    ids=["starts-with-a-digit", "too-short", "bad-character", "installed-id"],
)
def test_a_refused_name_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, message: str
) -> None:
    assert main(_new(tmp_path, name)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"tessera: {message}")
    assert err.count("\n") == 1  # one line, no traceback
    assert list(tmp_path.iterdir()) == []


def test_an_existing_project_directory_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "tessera-connector-acme"
    existing.mkdir()
    (existing / "mine.txt").write_text("not generated")
    assert main(_new(tmp_path, "acme")) == 2
    err = capsys.readouterr().err
    assert err == f"tessera: {existing} already exists; not overwriting it.\n"
    assert [p.name for p in existing.iterdir()] == ["mine.txt"]


def test_an_unknown_category_stays_argparses_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["connector", "new", "acme", "--category", "crypto", "--path", str(tmp_path)]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "invalid choice: 'crypto'" in capsys.readouterr().err


def test_a_project_that_cannot_be_written_exits_1_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file where the parent directory should be: an OSError, once a traceback."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    assert main(_new(blocker / "sub", "acme")) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tessera: cannot write the connector project under {blocker / 'sub'}: ")
    assert "Not a directory" in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_a_write_failing_halfway_leaves_no_half_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Otherwise the next attempt would be refused with "already exists"."""
    real_write = Path.write_text

    def failing_write(self: Path, *args: object, **kwargs: object) -> int:
        if self.name == "connector.py":
            raise OSError(28, "No space left on device", str(self))
        return real_write(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", failing_write)
    with pytest.raises(OSError, match="No space left"):
        generate_connector("acme", "card-acquirer", tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    package = generate_connector("acme", "card-acquirer", tmp_path)
    assert (package / "connector.py").is_file()


def test_a_valid_name_still_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_new(tmp_path, "Acme-Pay")) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Created {tmp_path / 'tessera-connector-acme-pay' / 'tessera_acme_pay'}")
    project = tmp_path / "tessera-connector-acme-pay"
    assert (project / "tessera_acme_pay" / "connector.py").is_file()
