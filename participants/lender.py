"""Lender SDK: register a CKKS public context once, then score enterprises; only this process can
decrypt the result.

Recipe::

    keys = LenderKeyPair.generate()                          # or LenderKeyPair.load("lender.ckks")
    client = LenderClient.connect("gw:50051", MutualTls.from_pki("pki", "lender"), keys)
    client.register()                                        # uploads the public context (once)
    [result] = client.score(["91350100M000100Y43"], [grant_json])   # purpose="monitoring" for a watchlist
    result.pd, result.score, result.grade, result.sources

    results = client.score_batch(pairs)                      # thousands: split into slot-sized requests
    client.score(usccs, grants, as_of="2025-03")             # features as of a month; result.as_of says so

The transport is an interface (:class:`GatewayTransport`): tests and tools can swap the gRPC one for
anything that returns the same messages. Errors are :class:`protocols.scoring.ScoringError`
subclasses named after what went wrong (``InvalidRequest``, ``UnknownKey``, ``NotAuthorized``, ...).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from concurrent import futures
from pathlib import Path
from typing import Protocol

import grpc


from crypto.ckks_keys import LenderKeyPair
from protocols._grpc import scoring_pb2 as pb
from protocols._grpc import scoring_pb2_grpc as pb_grpc
from protocols.consent import Grant
from protocols.consortium import check_address
from protocols.scoring import (
    DeadlineExceeded,
    InvalidRequest,
    MonthMismatch,
    MutualTls,
    ScoreResult,
    ScoreScale,
    ScoringLimits,
    ServiceUnavailable,
    SourceStatus,
    Stamp,
    combine_shares,
    error_from_status,
    feature_month,
    grade_for,
    grpc_options,
    scoring_purpose,
    sigmoid,
)
from protocols.uscc import validate_uscc

__all__ = ["GatewayTransport", "GrpcGatewayTransport", "LenderClient", "load_grants", "read_batch", "results_from_response"]


class GatewayTransport(Protocol):
    def register_key(self, request: pb.RegisterKeyRequest, timeout: float) -> pb.RegisterKeyResponse: ...

    def score(self, request: pb.ScoreRequest, timeout: float) -> pb.ScoreResponse: ...


class GrpcGatewayTransport:
    """One mutual-TLS channel to the gateway; gRPC errors become :class:`ScoringError` subclasses."""

    def __init__(self, address: str, tls: MutualTls, *, limits: ScoringLimits | None = None) -> None:
        check_address(address, "gateway")
        self._channel = grpc.secure_channel(address, tls.channel_credentials(), options=grpc_options(limits or ScoringLimits()))
        self._stub = pb_grpc.ScoringGatewayStub(self._channel)

    @staticmethod
    def _call(fn, request, timeout: float):
        try:
            return fn(request, timeout=timeout)
        except grpc.RpcError as err:
            code = err.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded(f"no answer from the gateway within {timeout:.1f} s") from None
            if code == grpc.StatusCode.UNAVAILABLE and "required" not in (err.details() or ""):
                raise ServiceUnavailable(f"gateway unavailable: {err.details()}") from None
            raise error_from_status(code.name, err.details() or "") from None

    def register_key(self, request: pb.RegisterKeyRequest, timeout: float) -> pb.RegisterKeyResponse:
        return self._call(self._stub.RegisterKey, request, timeout)

    def score(self, request: pb.ScoreRequest, timeout: float) -> pb.ScoreResponse:
        return self._call(self._stub.Score, request, timeout)

    def close(self) -> None:
        self._channel.close()


def _stamp() -> pb.Stamp:
    s = Stamp.new()
    return pb.Stamp(request_id=s.request_id, issued_at_ms=s.issued_at_ms)


def results_from_response(
    keys: LenderKeyPair, response: pb.ScoreResponse, usccs: Sequence[str], scale: ScoreScale, *, as_of: str = ""
) -> list[ScoreResult]:
    """Decrypt the shares and map each logit to PD, score, grade, contributing sources and the
    feature month each source used. ``as_of``: the month asked; a holder whose contribution is in
    the response but reports another month raises :class:`MonthMismatch` (nothing is returned)."""
    n = len(usccs)
    if response.count != n:
        raise InvalidRequest(f"gateway answered for {response.count} enterprises, asked {n}")
    months = {src.holder: src.as_of for src in response.sources if src.status == SourceStatus.CONTRIBUTED.value}
    wrong = {h: m for h, m in months.items() if as_of and m != as_of}
    if wrong:
        raise MonthMismatch(f"asked for features as of {as_of}, but " + ", ".join(
            f"{h} used {m or 'no month'}" for h, m in sorted(wrong.items())))
    used = set(months.values())
    month = used.pop() if len(used) == 1 else ""
    logits = combine_shares(keys, [(s.envelope, s.blocks, s.sign) for s in response.shares], n)
    pds = sigmoid(logits)
    unscored = set(response.unscored)
    out = []
    for i, code in enumerate(usccs):
        sources, missing = [], {}
        for src in response.sources:
            if src.status != SourceStatus.CONTRIBUTED.value:
                missing[src.holder] = src.status
            elif i in src.refusals:
                missing[src.holder] = src.refusals[i]
            else:
                sources.append(src.holder)
        if i in unscored:
            out.append(ScoreResult(uscc=code, scored=False, sources=(), missing=missing, model_ref=response.model_ref,
                                   as_of=month, months=months))
            continue
        p = float(pds[i])
        out.append(
            ScoreResult(
                uscc=code, scored=True, pd=p, logit=float(logits[i]), score=scale.score(p), grade=grade_for(p),
                sources=tuple(sources), missing=missing, model_ref=response.model_ref, as_of=month, months=months,
            )
        )
    return out


class LenderClient:
    """Scores enterprises through the gateway under this lender's CKKS key.

    Each request's deadline is ``timeout`` plus ``limits.per_subject_timeout_s`` per enterprise:
    every holder checks and durably counts consent per enterprise, which dominates large batches.
    """

    def __init__(
        self,
        transport: GatewayTransport,
        keys: LenderKeyPair,
        *,
        model_ref: str = "",
        scale: ScoreScale | None = None,
        limits: ScoringLimits | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.transport = transport
        self.keys = keys
        self.model_ref = model_ref
        self.scale = scale or ScoreScale()
        self.limits = limits or ScoringLimits()
        self.timeout = timeout

    @classmethod
    def connect(cls, address: str, tls: MutualTls, keys: LenderKeyPair, **kwargs) -> "LenderClient":
        return cls(GrpcGatewayTransport(address, tls, limits=kwargs.get("limits")), keys, **kwargs)

    @property
    def key_id(self) -> str:
        return self.keys.key_id

    def register(self) -> str:
        """Upload the public context (no secret key); returns the key id the gateway confirmed."""
        reply = self.transport.register_key(
            pb.RegisterKeyRequest(stamp=_stamp(), public_context=self.keys.public_context_bytes()), self.timeout
        )
        if reply.key_id != self.keys.key_id:
            raise InvalidRequest(f"gateway registered key {reply.key_id[:16]}, expected {self.keys.key_id[:16]}")
        return reply.key_id

    def score(
        self, usccs: Sequence[str], grants: Sequence[str | Grant], *, purpose: str = "scoring",
        as_of: str | None = None,
    ) -> list[ScoreResult]:
        """One request (at most ``limits.max_subjects`` enterprises), results in input order.
        ``purpose``: what the grants authorise, ``scoring`` or ``monitoring`` (a watchlist's monthly
        scores); every holder refuses a grant issued for another purpose. ``as_of``: the feature
        month (``YYYY-MM``) every holder must score with (default: each holder's default month);
        a holder that cannot serve it fails the request (``MonthNotAvailable``), one that answers
        for another month raises ``MonthMismatch``. Each result's ``as_of``/``months`` say what was used."""
        if len(usccs) != len(grants):
            raise InvalidRequest(f"{len(usccs)} enterprises but {len(grants)} grants")
        purpose = scoring_purpose(purpose)
        month = feature_month(as_of)
        texts = [g.model_dump_json() if isinstance(g, Grant) else str(g) for g in grants]
        request = pb.ScoreRequest(
            stamp=_stamp(), key_id=self.keys.key_id, model_ref=self.model_ref, purpose=purpose, as_of=month,
            subjects=[pb.Subject(uscc=u, grant_json=g) for u, g in zip(usccs, texts)],
        )
        response = self.transport.score(request, self.timeout + len(usccs) * self.limits.per_subject_timeout_s)
        return results_from_response(self.keys, response, [s.uscc for s in request.subjects], self.scale, as_of=month)

    def score_batch(
        self, pairs: Sequence[tuple[str, str | Grant]], *, chunk: int | None = None, parallel: int = 2,
        purpose: str = "scoring", as_of: str | None = None,
    ) -> list[ScoreResult]:
        """Many enterprises: slot-sized requests, ``parallel`` in flight, results in input order."""
        purpose = scoring_purpose(purpose)
        month = feature_month(as_of)
        size = min(chunk or self.limits.max_subjects, self.limits.max_subjects)
        chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
        with futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            parts = pool.map(
                lambda c: self.score([u for u, _ in c], [g for _, g in c], purpose=purpose, as_of=month), chunks)
            return [r for part in parts for r in part]


# ---------------------------------------------------------------------------------------------
# Grant and batch files
# ---------------------------------------------------------------------------------------------


def _grant_objects(text: str, source: str) -> Iterable[dict]:
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        pass
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise InvalidRequest(f"{source}:{lineno}: not a JSON grant") from None
    return out


def load_grants(paths: Iterable[str | Path]) -> dict[str, str]:
    """Grant files (one grant, a JSON array, or JSON lines) → ``{uscc: grant JSON}``.

    Only the enterprise field is read here; signatures are checked by the holders.
    """
    grants: dict[str, str] = {}
    for path in paths:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise InvalidRequest(f"{path}: cannot read grant file ({exc.strerror})") from None
        for obj in _grant_objects(text, str(path)):
            if isinstance(obj, Mapping) and "grant" in obj:
                obj = obj["grant"]
            try:
                enterprise = validate_uscc(obj["terms"]["enterprise"])
            except (KeyError, TypeError):
                raise InvalidRequest(f"{path}: a grant lacks terms.enterprise") from None
            grants[enterprise] = json.dumps(obj)
    return grants


def read_batch(path: str | Path, grants: Mapping[str, str]) -> list[tuple[str, str]]:
    """A batch file → (uscc, grant) pairs in file order.

    ``.json``/``.jsonl``: grants (the enterprise is taken from each grant). Anything else: text or
    CSV whose first column is the USCC (a header ``uscc`` is skipped); grants come from ``grants``.
    """
    path = Path(path)
    if path.suffix in (".json", ".jsonl"):
        pairs = list(load_grants([path]).items())
    else:
        pairs = _uscc_lines(path, grants)
    if not pairs:
        raise InvalidRequest(f"{path}: the batch file names no enterprise (no USCC)")
    return pairs


def _uscc_lines(path: Path, grants: Mapping[str, str]) -> list[tuple[str, str]]:
    pairs = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InvalidRequest(f"{path}: cannot read batch file ({exc.strerror})") from None
    for lineno, line in enumerate(lines, start=1):
        first = line.split(",")[0].strip()
        if not first or first.lower() == "uscc" or first.startswith("#"):
            continue
        try:
            code = validate_uscc(first)
        except ValueError as exc:
            raise InvalidRequest(f"{path}:{lineno}: {exc}") from None
        if code not in grants:
            raise InvalidRequest(f"{path}:{lineno}: no grant for this enterprise (pass --grant FILE)")
        pairs.append((code, grants[code]))
    return pairs



