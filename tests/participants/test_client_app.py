"""The ClientApp routes every message type the coordinator sends; run config is validated."""

from __future__ import annotations

import numpy as np
import pytest

from participants import client_app
from participants.handlers.horizontal import TrainSettings, _privatise, settings_from
from protocols.errors import ConfigError
from protocols.wire import horizontal as horizontal_wire
from protocols.wire import vertical as vertical_wire


@pytest.mark.parametrize("wire", [horizontal_wire, vertical_wire], ids=["horizontal", "vertical"])
def test_every_coordinator_message_type_has_a_registered_handler(wire):
    sent = {v for k, v in wire.ALL_NAMES.items() if k.startswith("MSG_")}
    assert sent <= set(client_app.HANDLERS)
    registered = set(client_app.app._registered_funcs)  # what Flower will dispatch on
    assert sent <= registered


def test_bad_message_types_are_refused():
    from flwr.clientapp import ClientApp

    with pytest.raises(ValueError):
        client_app.register(ClientApp(), {"fit.hfl": lambda c, ctx: c})
    with pytest.raises(ValueError):
        client_app.register(ClientApp(), {"train.not-an-identifier": lambda c, ctx: c})


def test_run_config_is_validated_with_a_typed_error():
    assert settings_from({"model": "mlp", "mlp-hidden": "8,4"}).hidden == (8, 4)
    with pytest.raises(ConfigError):
        settings_from({"model": "forest"})
    with pytest.raises(ConfigError):
        settings_from({"lr": -1})


def test_dp_clips_the_update_and_adds_noise_of_the_configured_scale():
    s = TrainSettings.model_validate({"dp-noise": 0.5, "dp-clip": 1.0})
    rng = np.random.default_rng(0)
    g = np.zeros(20_000)
    local = np.full(20_000, 10.0)  # update norm far above the clip
    out = _privatise(local, g, s, rng)
    noise_free = local / np.linalg.norm(local) * 1.0
    residual = out - noise_free
    assert abs(residual.std() - 0.5) < 0.02  # sigma = z * C
    s0 = TrainSettings.model_validate({"dp-noise": 1e-9, "dp-clip": 1.0})
    assert np.linalg.norm(_privatise(local, g, s0, rng)) == pytest.approx(1.0, abs=1e-4)


def test_horizontal_peers_check_the_key_holders_pinned_identity(tmp_path):
    """A peer installs the aggregation key only from the identity pinned for the key holder; a node
    on another key than its own pin refuses at hello."""
    from pathlib import Path

    from flwr.app import ConfigRecord, RecordDict

    from crypto.ckks_keys import AggregationKey
    from crypto.identity import IdentityKey
    from participants.handlers import horizontal
    from participants.handlers._common import long_term_keys
    from protocols.errors import ProtocolViolation

    holder_identity, _ = long_term_keys(tmp_path / "bank_a" / "keys")
    _, peer_wrap = long_term_keys(tmp_path / "bank_b" / "keys")
    example = Path(__file__).resolve().parents[2] / "examples" / "fate_horizontal.toml"
    pinned = example.read_text().replace(
        'name = "bank_a"\n', f'name = "bank_a"\nidentity_fingerprint = "{holder_identity.fingerprint}"\n', 1)
    consortium = tmp_path / "consortium.toml"
    consortium.write_text(pinned)

    def env_of(name: str):
        node = {"node-name": name, "consortium": str(consortium), "state-dir": str(tmp_path / name)}
        return horizontal.resolve_env(node, {}, 3)

    key = AggregationKey.generate()

    def message(signer: IdentityKey) -> RecordDict:
        wrapped = key.wrap_for(peer_wrap.public_key, signer=signer, sender_id="bank_a", recipient_id="bank_b")
        return RecordDict({
            horizontal_wire.REC_CONFIG: ConfigRecord({horizontal_wire.K_HOLDER: "bank_a",
                                                      horizontal_wire.K_KEY_ID: key.key_id}),
            horizontal_wire.REC_PAYLOAD: ConfigRecord({horizontal_wire.P_WRAPPED: wrapped,
                                                       horizontal_wire.P_HOLDER_IDENTITY: signer.public_key.to_bytes()}),
        })

    impostor = IdentityKey.generate()
    with pytest.raises(ProtocolViolation, match="identity relayed for 'bank_a' does not match") as err:
        horizontal.install_wrapped_key(message(impostor), env_of("bank_b"))
    assert impostor.fingerprint[:16] not in str(err.value)
    assert horizontal.install_wrapped_key(message(holder_identity), env_of("bank_b")) == key.key_id

    consortium.write_text(pinned.replace('name = "bank_b"\n', f'name = "bank_b"\nidentity_fingerprint = "{impostor.fingerprint}"\n', 1))
    with pytest.raises(ConfigError, match="participant 'bank_b': identity key .*wrong state dir"):
        horizontal.handle_hello(RecordDict(), env_of("bank_b"))


# --- horizontal key holder: relayed wrap keys are verified before the aggregation key is wrapped ---
def _horizontal_keygen_setup(tmp_path, pin_bank_b: bool):
    """bank_a (key holder), bank_b, bank_c with their long-term keys; ``announce(name)`` is what
    ``name`` sends at hello, ``keygen(entries)`` what the coordinator relays to bank_a."""
    import json
    from pathlib import Path

    from flwr.app import ConfigRecord, RecordDict

    from participants.handlers import horizontal
    from participants.handlers._common import announce_wrap_key, long_term_keys

    keys = {n: long_term_keys(tmp_path / n / "keys") for n in ("bank_a", "bank_b", "bank_c")}
    text = (Path(__file__).resolve().parents[2] / "examples" / "fate_horizontal.toml").read_text()
    if pin_bank_b:
        text = text.replace('name = "bank_b"\n',
                            f'name = "bank_b"\nidentity_fingerprint = "{keys["bank_b"][0].fingerprint}"\n', 1)
    consortium = tmp_path / "consortium.toml"
    consortium.write_text(text)

    def env_of(name: str, run_id: int = 3):
        node = {"node-name": name, "consortium": str(consortium), "state-dir": str(tmp_path / name)}
        return horizontal.resolve_env(node, {}, run_id)

    def announce(name: str, run_id: int = 3) -> tuple[str, bytes]:
        identity, wrap_pair = keys[name]
        sealed = announce_wrap_key(identity, name, env_of(name, run_id).session, wrap_pair.public_key)
        return json.dumps(sealed), identity.public_key.to_bytes()

    def keygen(entries: dict[str, tuple[str, bytes]]) -> RecordDict:
        peers = sorted(entries)
        return RecordDict({
            horizontal_wire.REC_CONFIG: ConfigRecord({horizontal_wire.K_PEERS: peers}),
            horizontal_wire.REC_PAYLOAD: ConfigRecord({
                horizontal_wire.P_PEER_WRAP_ANNOUNCEMENTS: [entries[p][0] for p in peers],
                horizontal_wire.P_PEER_IDENTITIES: [entries[p][1] for p in peers],
            }),
        })

    return keys, env_of, announce, keygen


def test_horizontal_hello_announces_the_wrap_key_sealed_by_the_identity(tmp_path):
    """What bank_b's hello would carry opens under its identity, for bank_b, in this run only."""
    import json

    from participants.handlers._common import WRAP_DOMAIN, open_wrap_key
    from protocols.errors import ProtocolViolation

    keys, env_of, announce, _ = _horizontal_keygen_setup(tmp_path, pin_bank_b=True)
    sealed, identity = announce("bank_b")
    env = env_of("bank_a")
    got_identity, wrap_key = open_wrap_key(env.consortium, "bank_a", "bank_b", identity, json.loads(sealed), env.session)
    assert wrap_key == keys["bank_b"][1].public_key and got_identity == keys["bank_b"][0].public_key
    assert json.loads(sealed)["domain"] == WRAP_DOMAIN
    assert env.session != env_of("bank_a", 4).session  # bound to the run
    with pytest.raises(ProtocolViolation, match="relayed for 'bank_c' is signed for another participant"):
        open_wrap_key(env.consortium, "bank_a", "bank_c", keys["bank_b"][0].public_key.to_bytes(),
                      json.loads(sealed), env.session)


def test_horizontal_key_holder_wraps_only_for_verified_wrap_keys(tmp_path):
    from flwr.app import ConfigRecord, RecordDict

    from participants.handlers import horizontal

    keys, env_of, announce, keygen = _horizontal_keygen_setup(tmp_path, pin_bank_b=True)
    reply = horizontal.handle_keygen(keygen({"bank_b": announce("bank_b"), "bank_c": announce("bank_c")}),
                                     env_of("bank_a"))
    cfg, payload = reply[horizontal_wire.REC_CONFIG], reply[horizontal_wire.REC_PAYLOAD]
    wrapped = list(payload[horizontal_wire.P_WRAPPED])
    assert len(wrapped) == 2
    for peer, blob in zip(["bank_b", "bank_c"], wrapped):  # each peer unwraps its own key
        fit = RecordDict({
            horizontal_wire.REC_CONFIG: ConfigRecord({horizontal_wire.K_HOLDER: "bank_a",
                                                      horizontal_wire.K_KEY_ID: cfg[horizontal_wire.K_KEY_ID]}),
            horizontal_wire.REC_PAYLOAD: ConfigRecord({
                horizontal_wire.P_WRAPPED: blob,
                horizontal_wire.P_HOLDER_IDENTITY: keys["bank_a"][0].public_key.to_bytes()}),
        })
        assert horizontal.install_wrapped_key(fit, env_of(peer)) == cfg[horizontal_wire.K_KEY_ID]


def _substitute(kind: str, keys, announce):
    """What an active coordinator could relay as bank_b's hello entry instead of bank_b's own."""
    import json

    from crypto.identity import IdentityKey
    from crypto.keywrap import WrapKeyPair
    from participants.handlers._common import announce_wrap_key

    attacker_identity, attacker_wrap = IdentityKey.generate(), WrapKeyPair.generate()
    sealed, identity = announce("bank_b")
    if kind == "swapped-bytes":  # bank_b's envelope, its key bytes replaced by the coordinator's
        doc = json.loads(sealed)
        doc["payload"]["x25519"] = attacker_wrap.public_bytes().hex()
        return json.dumps(doc), identity, attacker_wrap
    if kind in ("other-identity", "other-identity-unpinned"):  # sealed by the coordinator's identity
        ann = announce_wrap_key(attacker_identity, "bank_b", json.loads(sealed)["payload"]["session"],
                                attacker_wrap.public_key)
        return json.dumps(ann), attacker_identity.public_key.to_bytes(), attacker_wrap
    if kind == "signed-by-other-relayed-with-real-identity":
        ann = announce_wrap_key(attacker_identity, "bank_b", json.loads(sealed)["payload"]["session"],
                                attacker_wrap.public_key)
        return json.dumps(ann), identity, attacker_wrap
    if kind == "other-session":  # bank_b's genuine announcement of an earlier run, replayed
        old, identity = announce("bank_b", run_id=2)
        return old, identity, keys["bank_b"][1]
    if kind == "other-participant":  # bank_c's genuine announcement relayed as bank_b's
        other, identity = announce("bank_c")
        return other, identity, keys["bank_c"][1]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, pinned, why", [
    ("swapped-bytes", True, "is not signed by its identity"),
    ("swapped-bytes", False, "is not signed by its identity"),
    ("other-identity", True, "identity relayed for 'bank_b' does not match the fingerprint"),
    ("signed-by-other-relayed-with-real-identity", False, "is not signed by its identity"),
    ("other-session", True, "is signed for another participant or session"),
    ("other-participant", False, "is signed for another participant or session"),
    ("other-participant", True, "identity relayed for 'bank_b' does not match the fingerprint"),
])
def test_horizontal_key_holder_refuses_a_substituted_wrap_key(tmp_path, kind, pinned, why):
    from participants.handlers import horizontal

    keys, env_of, announce, keygen = _horizontal_keygen_setup(tmp_path, pin_bank_b=pinned)
    forged, identity, wrap_pair = _substitute(kind, keys, announce)
    env = env_of("bank_a")
    reply = horizontal.handle_keygen(keygen({"bank_b": (forged, identity), "bank_c": announce("bank_c")}), env)
    cfg = reply[horizontal_wire.REC_CONFIG]
    assert cfg[horizontal_wire.K_REFUSED] == "bank_b" and cfg[horizontal_wire.K_PARTICIPANT] == "bank_a"
    assert horizontal_wire.K_KEY_ID not in cfg and horizontal_wire.REC_PAYLOAD not in reply  # nothing wrapped
    message = str(cfg[horizontal_wire.K_REASON])
    assert why in message
    for secret_ish in (wrap_pair.public_bytes().hex()[:16], identity.hex()[:16], keys["bank_b"][0].fingerprint[:16]):
        assert secret_ish not in message  # names the participant, never a key
    assert not (env.run_dir / "aggregation.ckks").exists()  # no aggregation key was even made


def test_an_unpinned_identity_is_trusted_on_first_use(tmp_path):
    """What stays trusted without a pin: a coordinator that substitutes bank_b's identity AND its
    announcement consistently is believed (README "Threat model"); pinning closes it (above)."""
    from participants.handlers import horizontal

    keys, env_of, announce, keygen = _horizontal_keygen_setup(tmp_path, pin_bank_b=False)
    forged, identity, _ = _substitute("other-identity-unpinned", keys, announce)
    reply = horizontal.handle_keygen(keygen({"bank_b": (forged, identity), "bank_c": announce("bank_c")}),
                                     env_of("bank_a"))
    assert len(list(reply[horizontal_wire.REC_PAYLOAD][horizontal_wire.P_WRAPPED])) == 2


def test_horizontal_keygen_refuses_a_malformed_relay(tmp_path):
    from participants.handlers import horizontal
    from protocols.errors import ProtocolViolation

    _, env_of, announce, keygen = _horizontal_keygen_setup(tmp_path, pin_bank_b=False)
    env = env_of("bank_a")
    short = keygen({"bank_b": announce("bank_b"), "bank_c": announce("bank_c")})
    short[horizontal_wire.REC_PAYLOAD][horizontal_wire.P_PEER_IDENTITIES] = [announce("bank_b")[1]]
    with pytest.raises(ProtocolViolation, match="names 2 peer.*2 wrap key.*1 identity"):
        horizontal.handle_keygen(short, env)
    with pytest.raises(ProtocolViolation, match="include this node"):
        horizontal.handle_keygen(keygen({"bank_a": announce("bank_a"), "bank_b": announce("bank_b")}), env)
    for relayed, why in ((("{not json", announce("bank_b")[1]), "the announcement is not JSON"),
                         ((announce("bank_b")[0], b"short"), "the identity relayed for 'bank_b' is not an Ed25519")):
        cfg = horizontal.handle_keygen(keygen({"bank_b": relayed}), env)[horizontal_wire.REC_CONFIG]
        assert cfg[horizontal_wire.K_REFUSED] == "bank_b" and why in str(cfg[horizontal_wire.K_REASON])
    assert not (env.run_dir / "aggregation.ckks").exists()
