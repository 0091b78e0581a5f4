"""Message types and record keys of horizontal training.

The one definition both sides use: the coordinator (``coordinator.workflows.horizontal``,
``coordinator.strategies``) sends and reads them, the participant
(``participants.handlers.horizontal``) answers under them.

Exchange, one Flower message round per line (deployment rounds cost seconds, so few and fat):

1. ``query.hfl_hello``      → each node: participant name, sizes, Ed25519 identity key and its X25519
                              wrap key in an envelope sealed by that identity (bound to its name and
                              the run's session, ``participants.handlers._common.announce_wrap_key``)
2. ``query.hfl_keygen``     → key holder: peers' identity keys and wrap-key envelopes, relayed
                              unchanged; the holder verifies each (pinned fingerprint, signature,
                              name, session) before wrapping ← public context + one wrapped key per
                              peer, or a refusal naming the peer (``K_REFUSED``, ``K_REASON``;
                              the run stops)
3. ``train.hfl_fit`` × R    → aggregate of the previous round (ciphertext) and, until a node has
                              answered once, its wrapped aggregation key (relayed, never unwrapped
                              here); ← encrypted weighted update + validation metrics of the model
                              the round started from
4. ``evaluate.hfl_final``   → final aggregate; ← metrics of the final model (+ weights if published)

Setup therefore costs two message rounds, and R training rounds cost R + 1 more.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MSG_HELLO = "query.hfl_hello"
MSG_KEYGEN = "query.hfl_keygen"
MSG_FIT = "train.hfl_fit"
MSG_FINAL = "evaluate.hfl_final"

REC_CONFIG = "config"  # ConfigRecord: small scalars and names
REC_PAYLOAD = "payload"  # ConfigRecord: bytes (ciphertexts, keys, contexts)
REC_ARRAYS = "arrays"  # ArrayRecord: float64 vectors (plaintext mode, published weights)
REC_METRICS = "metrics"  # MetricRecord: metrics only, never rows

# config keys
K_PARTICIPANT = "participant"
K_ROUND = "round"
K_KEY_ID = "key-id"
K_HOLDER = "holder"
K_PEERS = "peers"
K_VERSION = "version"
K_PUBLISH = "publish"
K_NUM_TRAIN = "num-train"
K_NUM_VAL = "num-val"
K_NUM_FEATURES = "num-features"
K_NUM_PARAMS = "num-params"
K_REFUSED = "refused"  # keygen reply: the peer whose relayed wrap key the key holder refused
K_REASON = "reason"  # keygen reply: why (names participants, never a key)
# payload keys
P_WRAP_ANNOUNCEMENT = "wrap-announcement"  # JSON of the identity-sealed X25519 wrap key
P_IDENTITY_KEY = "identity-key"
P_PEER_WRAP_ANNOUNCEMENTS = "peer-wrap-announcements"  # list, in K_PEERS order
P_PEER_IDENTITIES = "peer-identities"  # list of raw Ed25519 keys, in K_PEERS order
P_PUBLIC_CONTEXT = "public-context"
P_WRAPPED = "wrapped"
P_HOLDER_IDENTITY = "holder-identity"
P_AGGREGATE = "aggregate"
P_UPDATE = "update"
# array keys
A_AGGREGATE = "aggregate"
A_UPDATE = "update"
A_WEIGHTS = "weights"


class SharedRunSettings(BaseModel):
    """Run-config keys both sides read, with their bounds in one place: participants train with them,
    and the coordinator refuses a bad value before any node starts."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    model: str = Field("logistic", pattern="^(logistic|mlp)$")
    mlp_hidden: str = Field("32,16", alias="mlp-hidden")
    local_epochs: int = Field(2, alias="local-epochs", ge=1, le=1000)
    lr: float = Field(0.01, gt=0, le=10)
    batch_size: int = Field(64, alias="batch-size", ge=1)
    encrypted: bool = True
    dp_noise: float = Field(0.0, alias="dp-noise", ge=0)
    dp_clip: float = Field(1.0, alias="dp-clip", gt=0)
    model_name: str = Field("horizontal-credit", alias="model-name")


#: every wire name above, by constant name (tests check each ``MSG_*`` has a handler).
ALL_NAMES: dict[str, str] = {k: v for k, v in dict(globals()).items() if k.isupper() and isinstance(v, str)}
