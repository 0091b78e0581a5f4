"""Encrypted scoring: what crosses the wire, the rules every hop applies, and the HE arithmetic.

Flow (protocol 4 of the design)::

    lender --Score(key_id, [uscc + grant])--> gateway --Contribute--> responder (each holder)
           <--shares (ciphertexts)----------          <--ciphertexts of its bottom output--

* Each holder checks consent per enterprise for the request's purpose (``scoring`` by default, or
  ``monitoring`` for a lender's watchlist: :data:`SCORING_PURPOSES`), embeds the enterprises it knows with its bottom model
  (zero for the ones it does not know or may not use) and encrypts under the lender's key.
* The gateway sums the holders' ciphertexts and evaluates the top with plaintext weights. It never
  decrypts: it holds only public contexts.
* The last summation of the top is left to the lender as *additive shares*: the gateway returns
  ciphertexts whose blocks the lender adds after decryption. Blocks are masked with random values
  that cancel in the sum, so the lender learns the logits and (up to a statistical distance of about
  ``|value| / MASK_BOUND``) nothing else. This replaces rotate-and-sum, which would need Galois keys
  (~35 MB per lender).

Packings (enterprises always in CKKS slots):

* linear top, layout ``packed`` (n·d ≤ slots, e.g. a single enterprise): each holder sends one
  ciphertext holding its (n × d) output column-major (d blocks of n). Gateway: Σ holders,
  × ``repeat(w2, n)``, + zero-sum masks carrying the bias; the lender adds the d blocks.
* linear top, layout ``columns`` (larger batches): d ciphertexts per holder (one per output
  dimension); the gateway computes ``Σ_j w2_j·z_j + b2`` itself and returns one logit vector.
* square/poly top, layout ``columns``: d envelopes per holder. With ``q_k = w2_k·c2`` and
  ``s_k = sqrt|q_k|`` the gateway computes ``t_k = s_k·(W1_k·z + b1_k)`` (level 1) and ``t_k²``
  (level 2); the ``c1`` term folds into one linear combination of z and the constant into a plain
  addition. Units with ``q_k < 0`` go to a second share the lender subtracts. Depth 2, so the default
  lender key (``SCORING``, N=8192) suffices.

Score scale: points-to-double-odds scorecard (:class:`ScoreScale`), grades A–E by PD band
(:data:`GRADE_BANDS`).

Feature month: a request may name the month ``as_of`` (``YYYY-MM``) every holder must score with;
``""`` means each holder's default month. Each holder reports the month it used (``SourceReport.as_of``)
and refuses a month it cannot serve (:class:`MonthNotAvailable`, naming the month and the holder), so
a score is never silently computed from another month's features.

Replay protection: every request carries a :class:`Stamp`; a receiver refuses a timestamp outside
``±window`` of its clock (``StaleRequest``) and an id it has seen from the same caller within the
window (``ReplayedRequest``). Ids older than the window can be forgotten because their timestamps
are refused anyway.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from crypto.ckks_keys import EncryptedVector, decrypt, linear_combination
from crypto.errors import CryptoError
from protocols.consortium import check_address
from protocols.errors import ConfigError, InvalidUSCC, ProtocolError
from protocols.feature_schemas import month_index
from protocols.uscc import validate_uscc

if TYPE_CHECKING:  # the lender SDK must not pull in torch just to name a type
    from models.split import TopSpec

__all__ = [
    "ScoringError", "InvalidRequest", "MonthNotAvailable", "MonthMismatch", "UnknownKey", "UnknownModel", "KeyNotUsable", "RequestTooLarge",
    "ReplayedRequest", "StaleRequest", "NotAuthorized", "RequiredSourceUnavailable", "ServiceUnavailable",
    "DeadlineExceeded", "status_name", "error_from_status",
    "Stamp", "ReplayGuard", "ScoringLimits", "ScoreScale", "GRADE_BANDS", "grade_for",
    "SourceStatus", "ScoreResult", "Layout", "layout_for", "depth_needed",
    "ShareOut", "evaluate_top", "combine_shares", "validate_subjects", "MASK_BOUND",
    "SCORING_PURPOSES", "scoring_purpose", "feature_month",
]

# ---------------------------------------------------------------------------------------------
# Errors: one hierarchy, each class maps to one gRPC status (by name, so this module needs no grpc)
# ---------------------------------------------------------------------------------------------


class ScoringError(ProtocolError):
    """Base class of scoring errors; ``status`` is the gRPC status code name it travels as."""

    status = "INTERNAL"


class InvalidRequest(ScoringError, ValueError):
    """Malformed request: bad USCC (the message names the rule), bad stamp, empty batch, duplicates."""

    status = "INVALID_ARGUMENT"


class MonthNotAvailable(InvalidRequest):
    """A feature month that is malformed or that a holder cannot serve (beyond or before its data, or
    data without months). The message starts with ``month`` and names the month and the holder."""

    status = "INVALID_ARGUMENT"


class MonthMismatch(ScoringError):
    """A holder answered with features of another month than the request named (lender side: the
    result is refused rather than used under the wrong month)."""


class UnknownKey(ScoringError, LookupError):
    """The key id was never registered by this lender (same answer if another lender registered it)."""

    status = "NOT_FOUND"


class UnknownModel(ScoringError, LookupError):
    status = "NOT_FOUND"


class KeyNotUsable(ScoringError):
    """The key cannot serve this request: too little depth, or a ciphertext under another key."""

    status = "FAILED_PRECONDITION"


class StaleRequest(ScoringError):
    """Timestamp outside the accepted window (replay or a wrong clock)."""

    status = "FAILED_PRECONDITION"


class RequestTooLarge(ScoringError):
    status = "RESOURCE_EXHAUSTED"


class ReplayedRequest(ScoringError):
    status = "ALREADY_EXISTS"


class NotAuthorized(ScoringError, PermissionError):
    """Consent refused (the message carries the reason) or the caller may not call this service."""

    status = "PERMISSION_DENIED"


class RequiredSourceUnavailable(ScoringError):
    """The label holder did not answer: without it no score is meaningful."""

    status = "UNAVAILABLE"


class ServiceUnavailable(ScoringError):
    status = "UNAVAILABLE"


class DeadlineExceeded(ScoringError, TimeoutError):
    status = "DEADLINE_EXCEEDED"


_BY_STATUS: dict[str, type[ScoringError]] = {
    "INVALID_ARGUMENT": InvalidRequest,
    "FAILED_PRECONDITION": KeyNotUsable,
    "RESOURCE_EXHAUSTED": RequestTooLarge,
    "ALREADY_EXISTS": ReplayedRequest,
    "PERMISSION_DENIED": NotAuthorized,
    "UNAVAILABLE": ServiceUnavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
}


def status_name(exc: BaseException) -> str:
    """gRPC status name for an exception raised while serving (unknown errors are INTERNAL)."""
    if isinstance(exc, ScoringError):
        return exc.status
    if isinstance(exc, InvalidUSCC):
        return "INVALID_ARGUMENT"
    return "INTERNAL"


def error_from_status(name: str, message: str) -> ScoringError:
    """The client-side exception for a status received from a server."""
    if name == "NOT_FOUND":
        return UnknownModel(message) if message.startswith("model") else UnknownKey(message)
    if name == "INVALID_ARGUMENT" and message.startswith("month "):
        return MonthNotAvailable(message)
    if name == "FAILED_PRECONDITION" and message.startswith("stale"):
        return StaleRequest(message)
    if name == "UNAVAILABLE" and "required" in message:
        return RequiredSourceUnavailable(message)
    cls = _BY_STATUS.get(name, ScoringError)
    return cls(message)


# ---------------------------------------------------------------------------------------------
# Limits and replay protection
# ---------------------------------------------------------------------------------------------


class ScoringLimits(BaseModel):
    """Bounds every hop enforces. One request's batch rides in one set of ciphertexts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_subjects: int = Field(default=4096, ge=1, description="enterprises per request (slots at N=8192)")
    max_grant_bytes: int = Field(default=8192, ge=256)
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1 << 20, description="gRPC receive limit")
    max_context_bytes: int = Field(default=48 * 1024 * 1024, ge=1 << 20, description="public context upload")
    replay_window_s: float = Field(default=120.0, gt=0)
    responder_timeout_s: float = Field(default=10.0, gt=0, description="per-holder deadline inside a request")
    per_subject_timeout_s: float = Field(
        default=0.025, ge=0,
        description="added per enterprise to holder and lender deadlines: holders check and durably count "
                    "consent per enterprise, which dominates large batches")
    default_deadline_s: float = Field(default=30.0, gt=0, description="when the caller set no deadline")

    def holder_timeout(self, n: int) -> float:
        return self.responder_timeout_s + n * self.per_subject_timeout_s


_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Stamp:
    request_id: str
    issued_at_ms: int

    @classmethod
    def new(cls, clock: Callable[[], float] = time.time) -> "Stamp":
        return cls(secrets.token_hex(16), int(clock() * 1000))


class ReplayGuard:
    """Seen-id cache with a time window; thread-safe. ``check`` raises or records the id."""

    def __init__(self, window_s: float = 120.0, *, max_entries: int = 1_000_000, clock=time.time) -> None:
        self.window_ms = int(window_s * 1000)
        self.max_entries = max_entries
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, caller: str, request_id: str, issued_at_ms: int) -> None:
        if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
            raise InvalidRequest("request id must be 32 lowercase hex characters (128 random bits)")
        now = int(self._clock() * 1000)
        if abs(now - int(issued_at_ms)) > self.window_ms:
            raise StaleRequest(
                f"stale request: timestamp is {abs(now - int(issued_at_ms)) / 1000:.0f} s from this server's clock "
                f"(window ±{self.window_ms / 1000:.0f} s)"
            )
        key = (caller, request_id)
        with self._lock:
            horizon = now - 2 * self.window_ms
            while self._seen:
                oldest_key, seen_at = next(iter(self._seen.items()))
                if seen_at >= horizon and len(self._seen) < self.max_entries:
                    break
                self._seen.popitem(last=False)
            if key in self._seen:
                raise ReplayedRequest(f"request id {request_id} was already used")
            self._seen[key] = now


# ---------------------------------------------------------------------------------------------
# Score scale and grades
# ---------------------------------------------------------------------------------------------

GRADE_BANDS: tuple[tuple[str, float], ...] = (
    ("A", 0.01),   # PD < 1%
    ("B", 0.03),   # 1% ≤ PD < 3%
    ("C", 0.07),   # 3% ≤ PD < 7%
    ("D", 0.15),   # 7% ≤ PD < 15%
    ("E", 1.01),   # PD ≥ 15%
)
"""Grade by 12-month probability of default: upper bound (exclusive) of each band."""


def grade_for(pd_: float) -> str:
    for grade, upper in GRADE_BANDS:
        if pd_ < upper:
            return grade
    return GRADE_BANDS[-1][0]


class ScoreScale(BaseModel):
    """Points-to-double-odds scorecard: ``score = base + pdo/ln2 · ln(odds / base_odds)`` with
    ``odds = (1 − PD) / PD`` (good:bad), clipped to ``[low, high]``. Defaults: 600 points at 50:1,
    +40 points each time the odds double, range 300–900 (PD 2% ≈ 600, 1% ≈ 640, 10% ≈ 480)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_score: float = 600.0
    base_odds: float = Field(default=50.0, gt=0)
    pdo: float = Field(default=40.0, gt=0)
    low: int = 300
    high: int = 900

    def score(self, pd_: float) -> int:
        p = min(max(float(pd_), 1e-12), 1 - 1e-12)
        raw = self.base_score + self.pdo / math.log(2) * math.log(((1 - p) / p) / self.base_odds)
        return int(round(min(max(raw, self.low), self.high)))


# ---------------------------------------------------------------------------------------------
# Results (lender side)
# ---------------------------------------------------------------------------------------------


class SourceStatus(StrEnum):
    CONTRIBUTED = "contributed"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    ERROR = "error"


class ScoreResult(BaseModel):
    """A decrypted score for one enterprise.

    ``sources``: holders whose contribution is in the score (authorised and answered; a holder that
    does not know the enterprise contributes zero, and whether it knows it is never revealed).
    ``missing``: holder → why it is not in the score (``timeout``, ``unavailable``, or the consent
    refusal reason). ``scored`` is False when the label holder refused: then pd/score/grade are None.
    ``months``: the feature month each answering holder used; ``as_of``: that month when they agree
    (always the requested month when the request named one), else ``""``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    uscc: str
    scored: bool
    pd: float | None = None
    logit: float | None = None
    score: int | None = None
    grade: str | None = None
    sources: tuple[str, ...] = ()
    missing: dict[str, str] = Field(default_factory=dict)
    model_ref: str = ""
    as_of: str = ""
    months: dict[str, str] = Field(default_factory=dict)


SCORING_PURPOSES: tuple[str, ...] = ("scoring", "monitoring")
"""Consent purposes a score request may name: a one-off ``scoring`` decision, or the periodic
``monitoring`` of an enterprise on a lender's watchlist. Holders check every grant against it."""


def scoring_purpose(purpose: str | None) -> str:
    """The consent purpose of a score request: ``scoring`` when unset (``""`` on the wire), else
    one of :data:`SCORING_PURPOSES`; anything else is an :class:`InvalidRequest`."""
    value = str(purpose) if purpose else "scoring"
    if value not in SCORING_PURPOSES:
        raise InvalidRequest(f"purpose {value!r} is not one of {', '.join(SCORING_PURPOSES)}")
    return value


def feature_month(as_of: str | None) -> str:
    """The feature month a request names: ``""`` (none: each holder's default month) or a valid
    ``YYYY-MM``; anything else is a :class:`MonthNotAvailable`."""
    if not as_of:
        return ""
    value = str(as_of)
    try:
        month_index(value)
    except ConfigError:
        raise MonthNotAvailable(f"month {value[:20]!r} is not YYYY-MM") from None
    if len(value) != 7:
        raise MonthNotAvailable(f"month {value[:20]!r} is not YYYY-MM")
    return value


def validate_subjects(usccs: Sequence[str], grants: Sequence[str], limits: ScoringLimits) -> list[str]:
    """Check a batch before anything else touches it; return normalised USCCs.

    Raises :class:`RequestTooLarge` beyond ``max_subjects`` and :class:`InvalidRequest` naming the
    subject index and the rule for an invalid USCC, a duplicate, or a missing/oversized grant.
    """
    if not usccs:
        raise InvalidRequest("request names no enterprise")
    if len(usccs) > limits.max_subjects:
        raise RequestTooLarge(f"{len(usccs)} enterprises in one request; at most {limits.max_subjects}")
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, (code, grant) in enumerate(zip(usccs, grants, strict=True)):
        try:
            norm = validate_uscc(code)
        except InvalidUSCC as exc:
            raise InvalidRequest(f"subject {i}: invalid USCC: {exc.rule}") from None
        if norm in seen:
            raise InvalidRequest(f"subject {i}: repeats subject {seen[norm]}")
        if not grant:
            raise InvalidRequest(f"subject {i}: no grant")
        if len(grant) > limits.max_grant_bytes:
            raise RequestTooLarge(f"subject {i}: grant of {len(grant)} bytes exceeds {limits.max_grant_bytes}")
        seen[norm] = i
        out.append(norm)
    return out


# ---------------------------------------------------------------------------------------------
# Homomorphic top evaluation (gateway) and share decoding (lender)
# ---------------------------------------------------------------------------------------------

Layout = Literal["packed", "columns"]
MASK_BOUND = float(2**20)
"""Masks on additive shares are uniform in ±MASK_BOUND: hides values of magnitude v up to a
statistical distance of about v / MASK_BOUND, well inside CKKS headroom at scale 2^40."""


def layout_for(spec: TopSpec, n: int, slots: int) -> Layout:
    """``packed`` while one holder's whole (n × d) block fits one ciphertext (linear top only);
    otherwise ``columns``, where the gateway finishes a linear top itself (one output ciphertext)."""
    return "packed" if spec.kind == "linear" and n * spec.in_dim <= slots else "columns"


def depth_needed(spec: TopSpec) -> int:
    return 1 if spec.kind == "linear" else 2


@dataclass(frozen=True)
class ShareOut:
    vector: EncryptedVector
    blocks: int
    sign: float


def _sum(vectors: Sequence[EncryptedVector]) -> EncryptedVector:
    """Sum without copying an input: ``a + b`` allocates the result, the rest is added in place
    (TenSEAL's vector copy costs as much as a serialization round trip)."""
    if len(vectors) == 1:
        return vectors[0]
    total = vectors[0] + vectors[1]
    for v in vectors[2:]:
        total.add_(v)
    return total


def _wrap(op: str, fn):
    try:
        return fn()
    except CryptoError as exc:
        raise KeyNotUsable(f"{op}: {exc}") from None


def evaluate_top(
    spec: TopSpec,
    contributions: Sequence[Sequence[EncryptedVector]],
    n: int,
    *,
    rng: np.random.Generator | None = None,
) -> list[ShareOut]:
    """Sum holders' encrypted bottom outputs and evaluate the top; return additive shares.

    ``contributions[h]`` is what holder ``h`` sent in :func:`layout_for`'s layout. Raises
    :class:`KeyNotUsable` if ciphertexts disagree on key or the key has too little depth.
    """
    if not contributions:
        raise KeyNotUsable("no contribution to evaluate")
    rng = rng or np.random.default_rng(secrets.randbits(128))
    d = spec.in_dim
    if spec.kind == "linear" and len(contributions[0]) == d and d > 1:  # columns layout
        z = [_wrap("sum", lambda j=j: _sum([c[j] for c in contributions])) for j in range(d)]
        if any(len(v) != n for v in z):
            raise KeyNotUsable(f"column contributions must hold {n} values each")
        return [ShareOut(_wrap("linear top", lambda: linear_combination(z, spec.w2.tolist(), float(spec.b2))), 1, 1.0)]
    if spec.kind == "linear":
        total = _wrap("sum", lambda: _sum([c[0] for c in contributions]))
        if len(total) != n * d:
            raise KeyNotUsable(f"contribution holds {len(total)} values, expected {n}×{d}")
        masks = rng.uniform(-MASK_BOUND, MASK_BOUND, size=(d, n))
        masks[-1] = spec.b2 - masks[:-1].sum(axis=0)
        pattern = np.repeat(spec.w2, n)
        out = _wrap("linear top", lambda: total.mul_plain(pattern).add_plain(masks.ravel()))
        return [ShareOut(out, d, 1.0)]
    assert spec.w1 is not None and spec.b1 is not None and spec.coeffs is not None
    z = [_wrap("sum", lambda j=j: _sum([c[j] for c in contributions])) for j in range(d)]
    if any(len(v) != n for v in z):
        raise KeyNotUsable(f"column contributions must hold {n} values each")
    c0, c1, c2 = spec.coeffs
    q = spec.w2 * c2
    v_lin = c1 * (spec.w1.T @ spec.w2)
    const = float(np.sum(spec.w2 * (c0 + c1 * spec.b1)) + spec.b2)
    pos: list[EncryptedVector] = []
    neg: list[EncryptedVector] = []
    for k in range(spec.w1.shape[0]):
        if q[k] == 0.0:
            continue
        s = math.sqrt(abs(q[k]))
        t = _wrap("hidden unit", lambda k=k, s=s: linear_combination(z, (s * spec.w1[k]).tolist(), s * float(spec.b1[k])))
        sq = _wrap("square", lambda t=t: t.square())
        (pos if q[k] > 0 else neg).append(sq)
    if np.any(v_lin != 0.0):
        pos.append(_wrap("linear term", lambda: linear_combination(z, v_lin.tolist())))
    if not pos:
        pos.append(_wrap("zero", lambda: z[0].mul_plain(0.0)))
    p = _wrap("sum", lambda: _sum(pos))
    if not neg:
        return [ShareOut(_wrap("constant", lambda: p.add_plain(const)), 1, 1.0)]
    mask = rng.uniform(-MASK_BOUND, MASK_BOUND, size=n)
    m = _wrap("sum", lambda: _sum(neg))
    return [
        ShareOut(_wrap("mask", lambda: p.add_plain(mask + const)), 1, 1.0),
        ShareOut(_wrap("mask", lambda: m.add_plain(mask)), 1, -1.0),
    ]


def combine_shares(key, shares: Sequence[tuple[bytes, int, float]], n: int) -> np.ndarray:
    """Lender side: decrypt each share, add its blocks, apply its sign; returns ``n`` logits."""
    logits = np.zeros(n, dtype=np.float64)
    for envelope, blocks, sign in shares:
        vec = EncryptedVector.from_bytes(envelope, key)
        if blocks < 1 or len(vec) != blocks * n:
            raise KeyNotUsable(f"share holds {len(vec)} values, expected {blocks}×{n}")
        logits += sign * decrypt(key, vec).reshape(blocks, n).sum(axis=0)
    return logits


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -700, 700)))


__all__.append("sigmoid")


# ---------------------------------------------------------------------------------------------
# Transport helpers shared by the gateway, the responders and the lender SDK
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MutualTls:
    """PEM files of one party: the consortium CA, its certificate and key (``fedscore certs``)."""

    ca_cert: "str | object"
    cert: "str | object"
    key: "str | object"

    @classmethod
    def from_pki(cls, root, name: str) -> "MutualTls":
        """Files written by :func:`crypto.tls.write_deployment_pki`: ``scoring/<name>.{crt,key}``."""
        from pathlib import Path

        root = Path(root)
        return cls(root / "ca.crt", root / "scoring" / f"{name}.crt", root / "scoring" / f"{name}.key")

    def _read(self) -> tuple[bytes, bytes, bytes]:
        from pathlib import Path

        try:
            return Path(self.ca_cert).read_bytes(), Path(self.cert).read_bytes(), Path(self.key).read_bytes()  # type: ignore[arg-type]
        except OSError as exc:
            raise ServiceUnavailable(f"cannot read TLS material: {exc.strerror} ({getattr(exc, 'filename', '')})") from None

    def server_credentials(self):
        import grpc

        ca, cert, key = self._read()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)

    def channel_credentials(self):
        import grpc

        ca, cert, key = self._read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def grpc_options(limits: ScoringLimits) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.so_reuseport", 0),
    ]


def peer_name(context) -> str | None:
    """Common name of the caller's TLS certificate (mutual TLS makes it authenticated)."""
    auth = context.auth_context()
    names = auth.get("x509_common_name") or []
    return names[0].decode() if names else None


def abort_rpc(context, exc: BaseException) -> None:
    """Abort the call with the status ``exc`` maps to (:func:`status_name`); ``INTERNAL`` carries no detail."""
    import grpc

    code = getattr(grpc.StatusCode, status_name(exc))
    context.abort(code, str(exc) if code != grpc.StatusCode.INTERNAL else "internal error")


@contextmanager
def rpc_errors(context, method: str, log: logging.Logger) -> Iterator[None]:
    """Around a servicer method's body: scoring, protocol and crypto errors leave as their status
    with their message; anything else is logged here and leaves as a bare ``INTERNAL`` (never leak
    internals, or data, in a status message)."""
    try:
        yield
    except (ScoringError, ProtocolError, CryptoError) as exc:
        abort_rpc(context, exc)
    except Exception:
        log.exception("%s failed", method)
        abort_rpc(context, RuntimeError())


def start_server(
    role: str,
    address: str,
    tls: MutualTls,
    limits: ScoringLimits,
    register: Callable[[object], None],
    *,
    workers: int = 8,
    thread_name_prefix: str = "",
    interceptors: Sequence[object] = (),
):
    """Start a mutual-TLS gRPC server on ``address``: ``register(server)`` adds the servicer; returns
    ``(server, port)`` once started (port 0 in the address = pick a free one)."""
    from concurrent import futures

    import grpc

    check_address(address, role, any_port=True)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name_prefix),
        options=grpc_options(limits),
        interceptors=list(interceptors),
        maximum_concurrent_rpcs=workers * 4,
    )
    register(server)
    port = server.add_secure_port(address, tls.server_credentials())
    if port == 0:
        raise OSError(f"cannot bind {role} to {address}")
    server.start()
    return server, port


@dataclass
class RunningService:
    """A started gRPC server and the port it bound; :meth:`close` is what a role frees after it stops."""

    server: object
    port: int

    def close(self) -> None:
        """Release what the service held once the server has stopped (nothing by default)."""

    def stop(self, grace: float | None = 0.5) -> None:
        self.server.stop(grace).wait()  # type: ignore[attr-defined]
        self.close()

    def wait(self) -> None:
        self.server.wait_for_termination()  # type: ignore[attr-defined]


__all__ += ["MutualTls", "grpc_options", "peer_name", "abort_rpc", "rpc_errors", "start_server", "RunningService"]
