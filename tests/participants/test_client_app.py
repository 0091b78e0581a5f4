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
