"""Message types and record keys of vertical training.

The one definition both sides use: the coordinator (``coordinator.workflows.vertical``,
``coordinator.workflows.psi_relay``) sends and reads them, the participant
(``participants.handlers.vertical``) answers under them.

One Flower message round per line (deployment rounds cost seconds, so rounds are few and fat)::

    PSI      query.vfl_psi_blind    → all: as-of month;         ← role + protocols.psi messages (the
                                                                   party's blinded ids, tag key)
             query.vfl_psi_reblind  → each party: the messages addressed to it (protocols.psi.route);
                                                                ← its Tags messages
             query.vfl_psi_match    → each party: the Tags addressed to it;
                                                                ← match sizes (counts only)
    setup    query.vfl_setup        → all: plan, session id;    ← identity key, signed masking
                                                                   announcement, signed wrap key
    train    train.vfl_step × R+2   → round r; r = 0 also the verified key directory;
                                      label holder: Z[r-1];     ← masked out[r], dZ[r-1] wrapped
                                      peer: its dZ[r-2] wrapped ← masked out[r]
                                      (rounds R, R+1 also carry the masked validation outputs)
    eval     evaluate.vfl_final     → all: model ref; label holder: Z_val
                                                                ← label holder: metrics + top spec;
                                                                   everyone: bottom saved locally
"""

from __future__ import annotations

MSG_PSI_BLIND = "query.vfl_psi_blind"
MSG_PSI_REBLIND = "query.vfl_psi_reblind"
MSG_PSI_MATCH = "query.vfl_psi_match"
MSG_SETUP = "query.vfl_setup"
MSG_STEP = "train.vfl_step"
MSG_FINAL = "evaluate.vfl_final"

REC_CONFIG = "vconfig"  # ConfigRecord: scalars, names, JSON strings of signed envelopes
REC_PAYLOAD = "vpayload"  # ConfigRecord: opaque bytes (masked vectors, wrapped dZ, identity keys)
REC_METRICS = "vmetrics"  # MetricRecord: metrics only, never rows
REC_PSI = "vpsi"  # ConfigRecord: protocols.psi messages (protocols.psi.encode_messages), opaque bytes

# config keys
K_PARTICIPANT = "participant"
K_LABEL_HOLDER = "label-holder"
K_ROLE = "role"  # "label-holder" | "peer"
K_DOMAIN = "domain"
K_SESSION = "session"
K_AS_OF = "as-of"
K_PLAN = "plan"  # VerticalPlan as JSON
K_ROUND = "round"
K_ROUNDS = "rounds"
K_PEERS = "peers"
K_UNIVERSE = "universe"  # number of label-holder rows
K_MATCHED = "matched"  # rows this node shares with the label holder
K_MATCHED_BY_PEER = "matched-by-peer"  # label holder: list aligned with K_PEERS
K_NUM_FEATURES = "num-features"
K_IDENTITY_FINGERPRINT = "identity-fingerprint"
K_MASK_ANNOUNCEMENT = "mask-announcement"  # JSON of the Ed25519-sealed masking announcement
K_WRAP_ANNOUNCEMENT = "wrap-announcement"  # JSON of the Ed25519-sealed X25519 wrap key
K_DIRECTORY = "directory"  # JSON: {name: {identity, mask, wrap}} relayed to everyone in round 0
K_VERSION = "version"  # model reference name:vN under which bottoms are stored
K_TOP_SPEC = "top-spec"  # JSON of models.split.TopSpec (label holder, final round)
K_COVERAGE = "coverage"  # JSON of coverage_metrics (label holder, final round)
K_CHALLENGER = "challenger"  # JSON: the label holder's own-features model on the same rows, and lending value
K_STORED = "stored"  # the node saved its bottom under K_VERSION
# payload keys
P_IDENTITY_KEY = "identity-key"
P_MASKED = "masked"  # MaskedVector bytes of out[r]
P_MASKED_VAL = "masked-val"  # MaskedVector bytes of the validation outputs
P_Z = "z"  # float64 bytes of the unmasked sum Z[r-1] (label holder only)
P_Z_VAL = "z-val"
P_GRADS = "grads"  # label holder → list of wrapped dZ, aligned with K_PEERS
P_GRAD = "grad"  # coordinator → peer: its wrapped dZ[r-2]

ROLE_LABEL_HOLDER = "label-holder"
ROLE_PEER = "peer"

#: every wire name above, by constant name (tests check each ``MSG_*`` has a handler).
ALL_NAMES: dict[str, str] = {k: v for k, v in dict(globals()).items() if k.isupper() and isinstance(v, str)}
