"""The ``fedscore`` command: exit codes and one-line errors, run as a real process."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedscore", *args], capture_output=True, text=True, timeout=120
    )


def run_here(capsys, *args: str) -> subprocess.CompletedProcess[str]:
    """``fedscore ARGS`` through the real entry point (``fedscore.main``: its error handling and exit
    codes), in this process: seconds cheaper than a fresh interpreter importing torch and Flower."""
    import pytest

    import fedscore

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        fedscore.main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["fedscore", *args], int(exited.value.code or 0), captured.out, captured.err)


def run_in_process(capsys, *args: str) -> tuple[int, str]:
    """As :func:`run_here`: (exit code, stdout + stderr)."""
    result = run_here(capsys, *args)
    return result.returncode, result.stdout + result.stderr


def test_uscc_validate_all_valid_exits_zero() -> None:
    result = run("uscc", "validate", "91350100M000100Y43", "91440300708461136T")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("valid") == 2


def test_uscc_validate_reports_each_code_and_fails_on_any_invalid() -> None:
    result = run("uscc", "validate", "91350100M000100Y43", "91350100M000100Y44")
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 2
    assert "check digit expected 3 got 4" in lines[1]
    assert "Traceback" not in result.stdout + result.stderr


def test_uscc_validate_json() -> None:
    import json

    result = run("uscc", "validate", "--json", "91350100M000100Y43", "913501")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["valid"] for r in rows] == [True, False]
    assert rows[1]["reason"] == "length must be 18, got 6"
    assert result.returncode == 1


def test_identity_show_prints_the_fingerprint_to_pin_and_no_private_material(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from crypto.identity import IdentityKey
    from participants.cli import app as participants_app

    first = run("identity", "show", "--state-dir", str(tmp_path / "node"))
    assert first.returncode == 0, first.stderr
    assert "created a new identity" in first.stderr
    key = IdentityKey.load(tmp_path / "node" / "keys" / "identity.key")
    assert first.stdout.strip() == f'identity_fingerprint = "{key.fingerprint}"'
    again = CliRunner().invoke(participants_app, ["identity", "show", "--state-dir", str(tmp_path / "node"), "--json"])
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)
    assert doc["fingerprint"] == key.fingerprint and doc["created"] is False  # same key, not a new one
    assert doc["public_key"] == key.public_key.to_bytes().hex()
    secret = (tmp_path / "node" / "keys" / "identity.key").read_bytes().split(b"\n")[1].decode()
    assert secret not in first.stdout + first.stderr + again.output


def test_a_missing_key_file_is_one_line_naming_it(tmp_path) -> None:
    from coordinator.consent_authority import ConsentAuthority

    ConsentAuthority.open(tmp_path / "consent")   # the folder is right: only the key is missing
    missing = str(tmp_path / "lender.ckks")
    for args in (("lender", "register", "--key", missing),
                 ("consent", "grant", "91350100M000100Y43", "--lender", "bank", "--purpose", "scoring",
                  "--key-file", missing, "--state-dir", str(tmp_path / "consent")),
                 ("monitor", "add", "--grant", missing, "--authority-key", missing,
                  "--state-dir", str(tmp_path / "lender"))):
        result = run(*args)
        assert result.returncode != 0
        assert f"{missing}: key file not found" in result.stderr
        assert "Traceback" not in result.stdout + result.stderr


def test_errors_stay_one_line_and_keep_bracketed_text(tmp_path) -> None:
    config = tmp_path / ("x" * 40) / "consortium.toml"
    config.parent.mkdir()
    config.write_text('name = "c"\nmode = "vertical"\n[coordinator]\nname = "c"\n'
                      'superlink_address = "127.0.0.1:9092"\ngateway_address = "127.0.0.1:50051"\n'
                      '[[participants]]\nname = "[bank]"\nkind = "bank"\n')
    result = run("baseline", "--dataset", "synth", "--config", str(config))
    assert result.returncode != 0
    (line,) = result.stderr.splitlines()  # not wrapped at the terminal width, however long the path
    assert str(config) in line and "[bank]" in line  # text, not console markup
    assert "Traceback" not in result.stdout + result.stderr


def test_a_file_given_as_a_folder_is_one_line_naming_it(tmp_path) -> None:
    file = tmp_path / "state.txt"
    file.write_text("")
    for args in (("models", "list", "--state-dir", str(file)),
                 ("certs", "--out", str(file), "-p", "bank"),
                 ("consent", "publish", "--state-dir", str(file)),
                 ("monitor", "list", "--state-dir", str(file))):
        result = run(*args)
        assert result.returncode != 0, args
        assert str(file) in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stdout + result.stderr
