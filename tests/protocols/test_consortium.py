"""Consortium config: valid files load; every kind of mistake is one line naming file, key, problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocols.consortium import (
    ConsortiumConfig,
    check_address,
    dump_consortium,
    load_consortium,
    parse_consortium,
    split_address,
)
from protocols.errors import ConfigError
from protocols.feature_schemas import STANDARD_SCHEMAS

VALID = """\
name = "demo"
mode = "vertical"
as_of = "2024-12"

[coordinator]
name = "operator"
superlink_address = "127.0.0.1:9092"
gateway_address = "127.0.0.1:50051"

[[participants]]
name = "bank"
kind = "bank"
holds_labels = true
lends = true
scoring_address = "127.0.0.1:50061"
data_dir = "bank"
[participants.features]
schema = "bank"
label_column = "default_month"
[participants.features.mapping]
credit_total = "inflow"

[[participants]]
name = "tax"
kind = "tax"
scoring_address = "127.0.0.1:50062"
data_dir = "data/tax"
[participants.features]
schema = "tax"
[participants.features.mapping]
vat_amt = "invoice_amount"

[[participants]]
name = "fate-host"
kind = "other"
scoring_address = "[::1]:50063"
data_dir = "/abs/fate"
[participants.features]
schema = "custom"
file = "host.csv"
id_column = "id"
id_format = "any"
columns = ["x0", "x1"]
[participants.features.mapping]
x2 = "pay_amt"

[[participants]]
name = "lender2"
kind = "other"
lends = true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "consortium.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_consortium(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "consortium.toml") in message
    return message


def test_valid_config_loads_with_paths_resolved_against_the_file(tmp_path: Path) -> None:
    cfg = load_consortium(write(tmp_path, VALID))
    assert cfg.label_holder.name == "bank"
    assert cfg.participant("tax").data_dir == (tmp_path / "data" / "tax").resolve()
    assert cfg.participant("fate-host").data_dir == Path("/abs/fate")
    assert cfg.participant("fate-host").features.feature_names() == ["pay_amt", "x0", "x1"]
    assert cfg.participant("tax").features.feature_names() == STANDARD_SCHEMAS["tax"].feature_names
    assert [p.name for p in cfg.lenders] == ["bank", "lender2"]
    assert [p.name for p in cfg.data_holders] == ["bank", "tax", "fate-host"]
    with pytest.raises(ConfigError, match="no participant 'nobody'"):
        cfg.participant("nobody")


def test_dump_then_load_round_trips_and_keeps_relative_dirs(tmp_path: Path) -> None:
    cfg = load_consortium(write(tmp_path, VALID))
    out = tmp_path / "copy" / "c.toml"
    dump_consortium(cfg, out)
    assert 'data_dir = "../data/tax"' in out.read_text()
    assert load_consortium(out) == cfg


@pytest.mark.parametrize(
    ("old", "new", "key", "problem"),
    [
        ('mode = "vertical"', 'mode = "diagonal"', ": mode:", "'vertical' or 'horizontal'"),
        ('"127.0.0.1:9092"', '"127.0.0.1:99999"', "coordinator.superlink_address:", "port"),
        ('"127.0.0.1:50062"', '"127.0.0.1"', "participants[1].scoring_address:", "host:port"),
        ('name = "tax"', 'name = "bank"', "participants[1].name:", "duplicate"),
        ('kind = "tax"', 'kind = "tax"\ncolour = "red"', "participants[1].colour:", "unknown key"),
        ('as_of = "2024-12"', 'as_of = "2024-13"', "as_of:", "YYYY-MM"),
        ('vat_amt = "invoice_amount"', 'vat_amt = "vat"', "participants[1].features.mapping.vat_amt:",
         "not a field of the tax standard schema"),
        ('"127.0.0.1:50062"', '"127.0.0.1:50061"', "participants[1].scoring_address:",
         "already used by participants[0].scoring_address"),
        ('schema = "tax"', 'schema = "utility"', "participants[1].features.mapping.vat_amt:",
         "utility"),
        ('file = "host.csv"\n', "", "participants[2].features.file:", "custom schema"),
        ('holds_labels = true\n', "", "participants[0].features.label_column:", "holds_labels"),
        ('superlink_address = "127.0.0.1:9092"\n', "", "coordinator.superlink_address:", "missing"),
        ('kind = "tax"\n', 'kind = "tax"\nholds_labels = true\n', "participants[1].features.label_column:",
         "required"),
        ('lends = true\n"""', '"""', "participants[3].features:", "must be a lender"),
        ('kind = "tax"\n', f'kind = "tax"\nidentity_fingerprint = "{"AB" * 32}"\n',
         "participants[1].identity_fingerprint:", "64 lowercase hex characters"),
        ('kind = "tax"\n', 'kind = "tax"\nidentity_fingerprint = "c1b5"\n',
         "participants[1].identity_fingerprint:", "(got 4 characters)"),
        ('kind = "tax"\n', f'kind = "tax"\nidentity_fingerprint = "{"ab" * 32}\\n"\n',
         "participants[1].identity_fingerprint:", "64 lowercase hex characters"),
    ],
)
def test_each_mistake_names_file_key_and_problem(
    tmp_path: Path, old: str, new: str, key: str, problem: str
) -> None:
    text = VALID.replace(old, new, 1) if old != 'lends = true\n"""' else VALID[: VALID.rindex("lends = true")]
    assert text != VALID
    message = error_of(tmp_path, text)
    assert key in message, message
    assert problem in message, message


def test_identity_fingerprint_is_optional_pinned_and_round_trips(tmp_path: Path) -> None:
    from crypto.identity import IdentityKey

    bank, tax = IdentityKey.generate().fingerprint, IdentityKey.generate().fingerprint
    text = VALID.replace('kind = "bank"\n', f'kind = "bank"\nidentity_fingerprint = "{bank}"\n', 1) \
                .replace('kind = "tax"\n', f'kind = "tax"\nidentity_fingerprint = "{tax}"\n', 1)
    cfg = load_consortium(write(tmp_path, text))
    assert cfg.participant("bank").identity_fingerprint == bank
    assert cfg.participant("tax").identity_fingerprint == tax
    assert cfg.participant("fate-host").identity_fingerprint is None
    out = tmp_path / "copy" / "c.toml"
    dump_consortium(cfg, out)
    assert f'identity_fingerprint = "{tax}"' in out.read_text() and load_consortium(out) == cfg
    message = error_of(tmp_path, text.replace(tax, bank))
    assert "participants[1].identity_fingerprint:" in message and "pinned for participants[0]" in message


def test_vertical_needs_exactly_one_label_holder(tmp_path: Path) -> None:
    text = VALID.replace('schema = "custom"', 'schema = "custom"\nlabel_column = "y"').replace(
        'kind = "other"\nscoring', 'kind = "other"\nholds_labels = true\nscoring'
    )
    message = error_of(tmp_path, text)
    assert "participants:" in message and "exactly one label holder, found 2" in message


def test_horizontal_allows_several_label_holders_sharing_one_schema(tmp_path: Path) -> None:
    banks = "".join(
        f"""
[[participants]]
name = "bank{i}"
kind = "bank"
holds_labels = true
data_dir = "b{i}"
[participants.features]
schema = "bank"
label_column = "default_month"
"""
        for i in range(3)
    )
    head = VALID.split("[[participants]]")[0].replace('"vertical"', '"horizontal"')
    cfg = load_consortium(write(tmp_path, head + banks))
    assert [p.name for p in cfg.label_holders] == ["bank0", "bank1", "bank2"]
    mixed = head + banks + "[[participants]]" + VALID.split("[[participants]]")[2].replace("data/tax", "t")
    message = error_of(tmp_path, mixed)
    assert "participants[3]" in message and "horizontal" in message


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    message = error_of(tmp_path, VALID.replace('name = "demo"', 'name = "demo'))
    assert "TOML syntax error" in message and "line 1" in message
    with pytest.raises(ConfigError, match="not found"):
        load_consortium(tmp_path / "absent.toml")


def test_parse_without_file_and_address_forms() -> None:
    import tomllib

    cfg = parse_consortium(tomllib.loads(VALID))
    assert isinstance(cfg, ConsortiumConfig)
    assert cfg.participant("tax").data_dir == Path("data/tax")  # no base dir: left relative
    assert split_address("[::1]:80") == ("::1", 80)
    assert split_address("node-1.bank.example:443") == ("node-1.bank.example", 443)
    for bad in ("nohost", "a b:80", ":80", "host:0", "host:x", "[zz]:1", "host:65536", "host:99999"):
        with pytest.raises(ValueError):
            split_address(bad)
    assert split_address("127.0.0.1:0", any_port=True) == ("127.0.0.1", 0)  # listen: any free port
    with pytest.raises(ConfigError, match=r"^--gateway: address 'host:99999': port must be an integer in 1\.\.65535$"):
        check_address("host:99999", "--gateway")
    assert check_address("[::1]:443", "--gateway") == "[::1]:443"


def test_every_example_consortium_in_the_repository_loads() -> None:
    examples = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.toml"))
    assert any(p.name == "sme_vertical.toml" for p in examples)
    for path in examples:
        cfg = load_consortium(path)
        assert cfg.data_holders and all(p.data_dir.is_absolute() for p in cfg.data_holders)


def test_parse_widths_accepts_positive_integers_and_names_the_key_otherwise():
    from protocols.consortium import parse_widths

    assert parse_widths("32, 16", "--hidden") == (32, 16) and parse_widths("", "--hidden") == ()
    for bad in ("32,abc", "0", "8,-4"):
        with pytest.raises(ConfigError, match=f"--hidden '{bad}' must be comma-separated positive integers"):
            parse_widths(bad, "--hidden")
