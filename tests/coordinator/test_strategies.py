"""Strategy arithmetic and privacy accounting, without any Flower runtime."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from coordinator.strategies import (
    CkksSum,
    EncryptedFedAvg,
    EncryptedFedProx,
    InsufficientNodes,
    NodeReply,
    PlainSum,
    make_strategy,
)
from protocols.wire import horizontal as wire
from coordinator.workflows.privacy import account, gaussian_rdp_epsilon
from crypto.ckks_keys import AggregationKey, decrypt, encrypt_vector
from crypto.errors import MissingSecretKey, SecretKeyPresent
from protocols.errors import ProtocolViolation


def _plain_reply(nid, name, vec, auc, n_val):
    return NodeReply(nid, name, RecordDict({
        wire.REC_ARRAYS: ArrayRecord({wire.A_UPDATE: Array(np.asarray(vec, dtype=np.float64))}),
        wire.REC_METRICS: MetricRecord({"val-auc": auc, "num-val": n_val}),
    }))


def test_weighted_mean_over_the_nodes_that_answered():
    strat = EncryptedFedAvg(PlainSum(), min_nodes=2)
    t1, t2 = np.array([1.0, 2.0]), np.array([3.0, 6.0])
    w1, w2 = 0.25, 0.75
    replies = [
        _plain_reply(1, "a", np.r_[w1 * t1, w1], 0.6, 100),
        _plain_reply(2, "b", np.r_[w2 * t2, w2], 0.8, 300),
        NodeReply(3, "c", None, "no reply within 10s"),
    ]
    out = strat.aggregate_train(1, replies)
    theta = out.aggregate[:-1] / out.aggregate[-1]
    np.testing.assert_allclose(theta, (w1 * t1 + w2 * t2) / (w1 + w2))
    assert out.dropped == ["c"] and out.contributors == ["a", "b"]
    assert out.aggregated_metrics["val-auc"] == pytest.approx((0.6 * 100 + 0.8 * 300) / 400)


def test_min_nodes_is_enforced_with_names():
    strat = EncryptedFedAvg(PlainSum(), min_nodes=2)
    with pytest.raises(InsufficientNodes, match="b"):
        strat.aggregate_train(3, [_plain_reply(1, "a", [1.0, 1.0], 0.5, 1), NodeReply(2, "b", None, "error")])


def test_ckks_sum_matches_plaintext_and_cannot_decrypt():
    key = AggregationKey.generate()
    ctx = key.public_context()
    rng = np.random.default_rng(1)
    vecs = [rng.normal(size=300) for _ in range(3)]
    blobs = [encrypt_vector(ctx, v).to_bytes() for v in vecs]
    agg = CkksSum(ctx)
    total = agg.sum(blobs)
    from crypto.ckks_keys import EncryptedVector

    np.testing.assert_allclose(decrypt(key, EncryptedVector.from_bytes(total, key)), np.sum(vecs, axis=0), atol=1e-5)
    with pytest.raises(MissingSecretKey):
        agg.try_decrypt(total)
    with pytest.raises(TypeError):
        CkksSum(key)  # a secret key is never accepted as the coordinator's context


def test_a_secret_context_is_refused_as_public():
    from crypto.ckks_keys import PublicContext

    key = AggregationKey.generate()
    with pytest.raises(SecretKeyPresent):
        PublicContext.from_bytes(key._secret_bytes())


def test_malformed_updates_are_protocol_violations():
    with pytest.raises(ProtocolViolation):
        PlainSum().extract(RecordDict({wire.REC_CONFIG: ConfigRecord({})}))
    with pytest.raises(ProtocolViolation):
        PlainSum().sum([np.zeros(3), np.zeros(4)])


def test_configure_train_carries_aggregate_and_prox_term():
    strat = make_strategy("fedprox", PlainSum(), min_nodes=1, proximal_mu=0.3)
    assert isinstance(strat, EncryptedFedProx)
    plan = strat.configure_train(2, [5, 6], np.arange(3.0))
    assert [nid for nid, _ in plan] == [5, 6]
    cfg = plan[0][1][wire.REC_CONFIG]
    assert cfg["strategy"] == "fedprox" and cfg["proximal-mu"] == 0.3 and cfg[wire.K_ROUND] == 2
    np.testing.assert_array_equal(plan[0][1][wire.REC_ARRAYS][wire.A_AGGREGATE].numpy(), np.arange(3.0))
    with pytest.raises(ValueError):
        make_strategy("fedprox", PlainSum(), min_nodes=1, proximal_mu=0.0)


def test_only_the_publisher_is_asked_for_weights():
    strat = EncryptedFedAvg(PlainSum(), min_nodes=1)
    plan = dict(strat.configure_evaluate([1, 2, 3], np.zeros(2), version="m:v1", publisher=2))
    assert [plan[n][wire.REC_CONFIG][wire.K_PUBLISH] for n in (1, 2, 3)] == [False, True, False]


def test_rdp_epsilon_behaves_like_an_accountant():
    e1, _ = gaussian_rdp_epsilon(1.0, 1, 1e-5)
    e10, _ = gaussian_rdp_epsilon(1.0, 10, 1e-5)
    e10_more_noise, _ = gaussian_rdp_epsilon(2.0, 10, 1e-5)
    assert 0 < e1 < e10 and e10_more_noise < e10
    # never looser than the zCDP bound rho + 2 sqrt(rho log 1/delta) for the same mechanism
    rho = 10 / (2 * 1.0**2)
    assert e10 <= rho + 2 * math.sqrt(rho * math.log(1e5)) + 1e-9
    assert gaussian_rdp_epsilon(0.0, 3, 1e-5)[0] == math.inf
    spent = account(1.5, 2.0, 4, 1e-6)
    assert spent.delta == 1e-6 and spent.clip_norm == 2.0 and spent.epsilon > 0
