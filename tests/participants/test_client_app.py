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
