"""``audit verify`` finds the first edited entry; ``audit show`` filters by enterprise (keyed hash),
lender and time without the log ever holding a raw USCC."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crypto.audit import AuditLog, keyed_hash
from crypto.identity import IdentityKey
from participants.audit_cli import app
from protocols.consent import create_pseudonym_key, load_pseudonym_key
from protocols.uscc import make_uscc

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc)
A = make_uscc("91350100M000100Y4")
B = make_uscc("91440300708461136")
runner = CliRunner()


@pytest.fixture
def node(tmp_path: Path):
    key = IdentityKey.generate()
    key.public_key.save(tmp_path / "node.pub")
    pseudonym = create_pseudonym_key(tmp_path / "pseudonym.key")
    log = AuditLog(tmp_path / "audit.jsonl", key)
    plan = [(A, "bank-a", 0), (B, "bank-a", 1), (A, "bank-b", 2), (A, "bank-a", 3), (B, "bank-b", 4)]
    for uscc, lender, day in plan:
        log.append({
            "action": "use", "node": "tax", "outcome": "allowed", "lender": lender, "purpose": "scoring",
            "enterprise": keyed_hash(pseudonym, uscc), "at": (T0 + timedelta(days=day)).isoformat(),
        })
    log.close()
    return tmp_path, plan


def invoke(*args: str):
    return runner.invoke(app, ["audit", *map(str, args)])


def shown(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def test_verify_accepts_an_intact_log(node) -> None:
    root, plan = node
    result = invoke("verify", root / "audit.jsonl", "--public-key", root / "node.pub")
    assert result.exit_code == 0 and f"{len(plan)} entries" in result.output


@pytest.mark.parametrize("index", [0, 2, 4])
def test_verify_names_the_edited_entry(node, index: int) -> None:
    root, _ = node
    path = root / "audit.jsonl"
    lines = path.read_text().splitlines()
    lines[index] = lines[index].replace('"outcome":"allowed"', '"outcome":"refused"')
    path.write_text("\n".join(lines) + "\n")
    result = invoke("verify", path, "--public-key", root / "node.pub")
    assert result.exit_code == 1
    assert f"at entry {index}:" in result.output


def test_verify_json_gives_the_count_or_the_broken_entry(node) -> None:
    root, plan = node
    path = root / "audit.jsonl"
    result = invoke("verify", path, "--public-key", root / "node.pub", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == {"ok": True, "entries": len(plan), "head_checked": False}
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"outcome":"allowed"', '"outcome":"refused"')
    path.write_text("\n".join(lines) + "\n")
    result = invoke("verify", path, "--public-key", root / "node.pub", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["broken_at"] == 2 and doc["reason"]


def test_verify_rejects_a_log_from_another_node(node) -> None:
    root, _ = node
    IdentityKey.generate().public_key.save(root / "other.pub")
    result = invoke("verify", root / "audit.jsonl", "--public-key", root / "other.pub")
    assert result.exit_code == 1 and "at entry 0:" in result.output


def test_show_filters_by_enterprise_via_keyed_hash(node) -> None:
    root, plan = node
    rows = shown(invoke("show", root / "audit.jsonl", "--enterprise", A, "--key-file", root / "pseudonym.key", "--json"))
    assert len(rows) == sum(1 for uscc, _, _ in plan if uscc == A)
    assert {r["event"]["enterprise"] for r in rows} == {keyed_hash(load_pseudonym_key(root / "pseudonym.key"), A)}
    assert A not in (root / "audit.jsonl").read_text() and B not in (root / "audit.jsonl").read_text()


def test_show_enterprise_needs_the_key(node) -> None:
    root, _ = node
    result = invoke("show", root / "audit.jsonl", "--enterprise", A)
    assert result.exit_code != 0 and "--key-file" in result.output


def test_show_filters_by_lender_and_time(node) -> None:
    root, plan = node
    log = root / "audit.jsonl"
    by_lender = shown(invoke("show", log, "--lender", "bank-b", "--json"))
    assert len(by_lender) == sum(1 for _, lender, _ in plan if lender == "bank-b")
    assert {r["event"]["lender"] for r in by_lender} == {"bank-b"}
    window = shown(invoke("show", log, "--since", "2025-03-02", "--until", "2025-03-04", "--json"))
    assert [r["seq"] for r in window] == [i for i, (_, _, day) in enumerate(plan) if 1 <= day < 3]
    combined = shown(invoke("show", log, "--lender", "bank-a", "--since", "2025-03-02T00:00:00Z", "--json"))
    assert [r["seq"] for r in combined] == [i for i, (_, lender, day) in enumerate(plan) if lender == "bank-a" and day >= 1]


def test_show_table_and_bad_date(node) -> None:
    root, plan = node
    result = invoke("show", root / "audit.jsonl")
    assert result.exit_code == 0 and result.output.count("scoring") == len(plan)
    assert invoke("show", root / "audit.jsonl", "--since", "yesterday").exit_code != 0


def _head(capsys, root: Path, key_file: Path, out: Path):
    from tests.test_cli import run_here

    return run_here(capsys, "audit", "head", str(root / "audit.jsonl"), "--identity-key", str(key_file),
                    "--out", str(out))


@pytest.fixture
def signed(node, capsys):
    """The node's log with a signed head published, the identity key kept beside it."""
    root, plan = node
    key = IdentityKey.generate()
    key.public_key.save(root / "node.pub")   # a fresh identity signs a fresh log
    key.save(root / "identity.key")
    (root / "audit.jsonl").unlink()
    with AuditLog(root / "audit.jsonl", key) as log:
        for i in range(4):
            log.append({"action": "use", "outcome": "allowed", "at": (T0 + timedelta(days=i)).isoformat()})
    result = _head(capsys, root, root / "identity.key", root / "head.json")
    assert result.returncode == 0, result.stderr
    return root, key


@pytest.mark.parametrize("keep", [0, 2])
def test_verify_with_a_signed_head_catches_a_log_cut_short(signed, keep: int) -> None:
    root, _ = signed
    path = root / "audit.jsonl"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:keep]))
    alone = invoke("verify", path, "--public-key", root / "node.pub", "--json")
    assert alone.exit_code == 0 and json.loads(alone.output) == {"ok": True, "entries": keep, "head_checked": False}
    result = invoke("verify", path, "--public-key", root / "node.pub", "--head", root / "head.json", "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)["reason"] == f"log truncated: signed head has 4 entries, file has {keep}"


def test_verify_with_a_signed_head_accepts_entries_appended_after_it(signed) -> None:
    root, key = signed
    with AuditLog(root / "audit.jsonl", key) as log:
        log.append({"action": "use", "outcome": "denied", "at": T0.isoformat()})
    result = invoke("verify", root / "audit.jsonl", "--public-key", root / "node.pub", "--head", root / "head.json",
                    "--json")
    assert result.exit_code == 0 and json.loads(result.output) == {"ok": True, "entries": 5, "head_checked": True}


def test_a_bad_or_foreign_head_is_one_error_line_naming_the_file(signed, capsys) -> None:
    from tests.test_cli import run_here

    root, _ = signed
    other = IdentityKey.generate()
    forged = other.seal("audit.head/v1", {"count": 0, "last_hash": "0" * 64, "signer": other.fingerprint})
    (root / "forged.json").write_text(json.dumps(forged))
    (root / "junk.json").write_text("not json")
    (root / "fields.json").write_text(json.dumps({"count": 4}))
    for bad in ("forged.json", "junk.json", "fields.json"):
        result = run_here(capsys, "audit", "verify", str(root / "audit.jsonl"), "--public-key", str(root / "node.pub"),
                          "--head", str(root / bad))
        assert result.returncode == 2 and result.stderr.startswith(f"error: --head {root / bad}: "), result.stderr
        assert len(result.stderr.splitlines()) == 1 and result.stdout == ""


def test_head_refuses_a_broken_log_and_a_bad_out_before_writing(signed, capsys) -> None:
    root, _ = signed
    path = root / "audit.jsonl"
    before = path.read_bytes()
    for out, problem in ((path, "is the log itself"), (root / "nowhere" / "h.json", f"no such folder {root / 'nowhere'}"),
                         (root, "is a directory")):
        result = _head(capsys, root, root / "identity.key", out)
        assert result.returncode == 2 and result.stderr.strip() == f"error: --out {out}: {problem}"
    assert path.read_bytes() == before
    lines = before.decode().splitlines()
    path.write_text("\n".join([lines[0], lines[2], lines[1], lines[3]]) + "\n")
    result = _head(capsys, root, root / "identity.key", root / "again.json")
    assert result.returncode == 2 and result.stderr.startswith(f"error: {path}: broken at entry 1 ")
    assert not (root / "again.json").exists()
