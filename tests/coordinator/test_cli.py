"""Operator commands that need no running federation: models list/show, certs, argument checks."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from coordinator.cli import app, horizontal_run_config
from coordinator.registry import ModelRegistry
from participants.datasets.fate import HORIZONTAL_CONFIG, VERTICAL_CONFIG
from protocols.errors import ConfigError

runner = CliRunner()
ENTERPRISE = "91350100M000100Y43"


def test_models_list_and_show_read_the_registry(tmp_path):
    reg = ModelRegistry(tmp_path)
    v = reg.create("credit", kind="horizontal", config={"rounds": 2}, participants=["bank_a", "bank_b"])
    reg.complete(v, metrics={"final": {"test-auc": 0.73}}, weights_location={"participants": ["bank_a", "bank_b"]})
    out = runner.invoke(app, ["models", "list", "--state-dir", str(tmp_path), "--json"])
    assert out.exit_code == 0, out.output
    (row,) = json.loads(out.output)
    assert row["name"] == "credit" and row["status"] == "ready"
    out = runner.invoke(app, ["models", "show", "credit:v1", "--state-dir", str(tmp_path)])
    assert out.exit_code == 0 and json.loads(out.output)["metrics"]["final"]["test-auc"] == 0.73
    out = runner.invoke(app, ["models", "list", "--state-dir", str(tmp_path)])
    assert out.exit_code == 0 and "credit:v1" in out.output


@pytest.mark.parametrize("args, holds", [
    (["models", "list"], "model registry"),
    (["models", "show", "credit:v1"], "model registry"),
    (["consent", "status", ENTERPRISE], "consent authority database"),
    (["consent", "list", ENTERPRISE, "--json"], "consent authority database"),
    (["consent", "grant", ENTERPRISE, "--lender", "bank", "--purpose", "scoring"], "consent authority database"),
    (["consent", "revoke", ENTERPRISE, "G" * 22], "consent authority database"),
])
@pytest.mark.parametrize("made", [False, True], ids=["missing", "empty"])
def test_reading_commands_refuse_a_state_folder_without_their_store_and_create_nothing(tmp_path, capsys, args,
                                                                                       holds, made):
    from crypto.identity import IdentityKey
    from tests.test_cli import run_in_process

    state = tmp_path / "typo"
    if made:
        state.mkdir()
    key = tmp_path / "sme.key"
    IdentityKey.generate().save(key)
    extra = ["--key-file", str(key)] if args[0] == "consent" else []
    code, output = run_in_process(capsys, *args, *extra, "--state-dir", str(state))
    assert code != 0 and "Traceback" not in output
    assert output.strip().startswith(f"error: state folder {state} ")
    assert holds in output and len(output.strip().splitlines()) == 1
    assert state.is_dir() == made and (not made or not list(state.iterdir()))  # nothing created there


@pytest.mark.parametrize("args", [["status", ENTERPRISE], ["list", ENTERPRISE],
                                  ["grant", ENTERPRISE, "--lender", "bank", "--purpose", "scoring"],
                                  ["revoke", ENTERPRISE, "G" * 22]])
def test_consent_names_a_wrong_state_folder_before_looking_for_the_key(tmp_path, capsys, args):
    from tests.test_cli import run_in_process

    state, key = tmp_path / "typo", tmp_path / "nowhere.key"
    code, output = run_in_process(capsys, "consent", *args, "--key-file", str(key), "--state-dir", str(state))
    assert code != 0 and output.strip().startswith(f"error: state folder {state} "), output
    assert str(key) not in output and not state.exists()


def test_certs_refuses_a_host_that_is_not_a_name_or_ip_before_writing_anything(tmp_path, capsys):
    from tests.test_cli import run_in_process

    out = tmp_path / "pki"
    code, output = run_in_process(capsys, "certs", "--out", str(out), "-p", "bank", "--host", "localhost",
                                  "--host", "not a host!!")
    assert code != 0 and "Traceback" not in output
    assert "'not a host!!'" in output and not out.exists()


def test_certs_json_lists_the_paths_written_and_no_key_material(tmp_path):
    out = runner.invoke(app, ["certs", "--out", str(tmp_path / "pki"), "-p", "bank", "--host", "10.0.0.7",
                              "--host", "gw.example.org", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["ca_cert"] == str(tmp_path / "pki" / "ca.crt") and doc["ca_key"] == str(tmp_path / "pki" / "ca.key")
    assert doc["scoring"]["responders"]["bank"]["key"] == str(tmp_path / "pki" / "scoring" / "bank.key")
    assert doc["supernodes"]["bank"]["public_key"] == str(tmp_path / "pki" / "supernodes" / "bank.pub")
    assert "PRIVATE KEY" not in out.output and "CERTIFICATE" not in out.output


def test_certs_for_a_consortium(tmp_path):
    out = runner.invoke(app, ["certs", "--out", str(tmp_path / "pki"), "--config", str(HORIZONTAL_CONFIG)])
    assert out.exit_code == 0, out.output
    manifest = json.loads((tmp_path / "pki" / "pki.json").read_text())
    assert set(manifest["supernodes"]) == {"bank_a", "bank_b", "bank_c"}
    assert (tmp_path / "pki" / "superlink" / "server.crt").is_file()


def test_train_refuses_bad_choices_before_starting_anything(tmp_path):
    out = runner.invoke(app, ["train", "horizontal", "-c", str(HORIZONTAL_CONFIG), "--model", "forest",
                              "--state-dir", str(tmp_path)])
    assert out.exit_code != 0 and isinstance(out.exception, ConfigError)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, named", [
    (["train", "vertical", "--hidden", "32,abc"], "--hidden '32,abc'"),
    (["train", "vertical", "--hidden", "0,16"], "--hidden '0,16'"),
    (["train", "vertical", "--as-of", "2024-13"], "--as-of: invalid month '2024-13'"),
    (["train", "vertical", "--lr", "0"], "lr: Input should be greater than 0"),
    (["train", "horizontal", "--lr", "0"], "lr: Input should be greater than 0"),
    (["train", "horizontal", "--dp-delta", "1"], "dp-delta: Input should be less than 1"),
    (["train", "horizontal", "--mlp-hidden", "8,-4"], "--mlp-hidden '8,-4'"),
])
def test_train_refuses_bad_numbers_naming_the_option_before_starting_anything(tmp_path, args, named):
    config = HORIZONTAL_CONFIG if args[1] == "horizontal" else VERTICAL_CONFIG
    out = runner.invoke(app, [*args, "-c", str(config), "--state-dir", str(tmp_path)])
    assert out.exit_code != 0 and isinstance(out.exception, ConfigError)
    assert named in str(out.exception)
    assert not list(tmp_path.iterdir())  # no simulation was started, no work folder left behind


def test_run_config_names_only_declared_keys():
    import tomllib

    from coordinator.workflows.launch import APP_DIR

    declared = set(tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    rc = horizontal_run_config(HORIZONTAL_CONFIG, state_dir=APP_DIR, result_file=APP_DIR / "x.json",
                               node_state_root=APP_DIR, options={"rounds": 2, "dp-noise": 0.5})
    assert set(rc) <= declared  # Flower refuses overrides of undeclared keys
    assert rc["expect-nodes"] == 3 and rc["min-nodes"] == 3


def test_vertical_consortium_is_refused_for_horizontal_training():
    from participants.datasets.fate import VERTICAL_CONFIG

    with pytest.raises(ConfigError):
        horizontal_run_config(VERTICAL_CONFIG, state_dir=VERTICAL_CONFIG.parent, result_file=VERTICAL_CONFIG,
                              node_state_root=VERTICAL_CONFIG.parent, options={})


@pytest.fixture(scope="module")
def gateway_pki(tmp_path_factory):
    from crypto.tls import write_deployment_pki

    root = tmp_path_factory.mktemp("gateway-pki")
    write_deployment_pki(root, ["guest", "host"])
    return root


@pytest.mark.parametrize("extra, named", [
    (["--address", "127.0.0.1:99999"], "'127.0.0.1:99999': port must be an integer in 0..65535"),
    (["--address", "bad host:50051"], "invalid host 'bad host'"),
    (["--model", "nosuch:v1"], "--model: model 'nosuch:v1' is not in the registry ("),
])
@pytest.mark.timeout(60)  # in process: a regression that starts serving must fail, not hang the worker
def test_serve_gateway_refuses_a_bad_address_or_model_before_reporting_ready(capsys, tmp_path, gateway_pki, extra, named):
    from tests.test_cli import run_here

    result = run_here(capsys, "serve", "gateway", "--consortium", str(VERTICAL_CONFIG), "--pki", str(gateway_pki),
                 "--state-dir", str(tmp_path / "coordinator"), *extra)
    assert result.returncode != 0
    assert '"ready"' not in result.stdout
    assert named in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    if extra[0] == "--model":
        assert str(tmp_path / "coordinator" / "registry.sqlite3") in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
