"""Scoring gateway at the coordinator: validates lender requests, fans out to the holders'
responders in parallel, sums their ciphertexts and evaluates the top homomorphically.

The gateway is blind by construction: it holds lenders' *public* contexts only (a context with a
secret key is refused at registration), receives ciphertexts from responders and returns
ciphertexts (additive shares, see :mod:`protocols.scoring`). What it does see in clear: USCCs and
grants of the request (it routes them), sizes, which holders answered and consent refusal reasons.

Faults: a holder that is down, slow or broken is left out (its contribution is zero, which is what
the model was trained for with source dropout) and the response says so. The label holder is
*required*: its bottom model is never dropped in training, so without it the score is not the
model's, and the request fails with UNAVAILABLE. Every outbound call has a deadline derived from the
caller's, so a request never hangs.

Feature month: the lender's ``as_of`` goes to every holder unchanged. A holder that refuses the month
(:class:`MonthNotAvailable`) fails the whole request with its message (naming the month and the
holder): leaving it out would change the score for a reason the lender did not ask for. A holder that
answers for another month than the one asked is left out as faulty. Each source report carries the
month its holder used.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

from crypto.ckks_keys import EncryptedVector, PublicContext
from crypto.errors import CryptoError, KeyMismatch
from models.split import TopSpec
from protocols._grpc import scoring_pb2 as pb
from protocols._grpc import scoring_pb2_grpc as pb_grpc
from protocols.scoring import (
    DeadlineExceeded,
    InvalidRequest,
    KeyNotUsable,
    MonthNotAvailable,
    MutualTls,
    NotAuthorized,
    ReplayGuard,
    RequestTooLarge,
    RequiredSourceUnavailable,
    RunningService,
    ScoringError,
    ScoringLimits,
    ServiceUnavailable,
    SourceStatus,
    Stamp,
    UnknownKey,
    UnknownModel,
    depth_needed,
    error_from_status,
    evaluate_top,
    feature_month,
    grpc_options,
    layout_for,
    peer_name,
    rpc_errors,
    scoring_purpose,
    start_server,
    validate_subjects,
)

__all__ = [
    "Holder", "KeyStore", "ResponderTransport", "GrpcResponderTransport", "GatewayCore", "GatewayService",
    "serve_gateway", "registry_tops", "GATEWAY_NAME",
]

log = logging.getLogger(__name__)

GATEWAY_NAME = "scoring-gateway"
_VERSIONED = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}:v[0-9]+$")


@dataclass(frozen=True)
class Holder:
    name: str
    address: str
    required: bool = False


class KeyStore:
    """Lenders' registered public contexts, by key id; persisted under ``root`` if given.

    A key belongs to the lender that registered it: another lender naming the same id gets
    NOT_FOUND, exactly as for an id never registered.
    """

    def __init__(self, root: str | Path | None = None, *, limits: ScoringLimits | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self.limits = limits or ScoringLimits()
        self._keys: dict[str, tuple[str, PublicContext]] = {}
        self._lock = threading.Lock()
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            for ctx_file in sorted(self.root.glob("*.ctx")):
                lender = ctx_file.with_suffix(".lender").read_text().strip()
                try:
                    ctx = PublicContext.from_bytes(ctx_file.read_bytes(), expected_key_id=ctx_file.stem)
                except CryptoError as exc:
                    log.warning("skipping stored key %s: %s", ctx_file.stem[:16], exc)
                    continue
                self._keys[ctx.key_id] = (lender, ctx)

    def register(self, lender: str, public_context: bytes) -> PublicContext:
        if len(public_context) > self.limits.max_context_bytes:
            raise RequestTooLarge(f"public context of {len(public_context)} bytes exceeds {self.limits.max_context_bytes}")
        try:
            ctx = PublicContext.from_bytes(public_context)
        except CryptoError as exc:
            raise InvalidRequest(f"public context refused: {exc}") from None
        with self._lock:
            owner = self._keys.get(ctx.key_id, (lender, None))[0]
            if owner != lender:
                raise NotAuthorized("this key is registered to another lender")
            self._keys[ctx.key_id] = (lender, ctx)
            if self.root is not None:
                tmp = self.root / f".{ctx.key_id}.tmp"
                tmp.write_bytes(ctx.to_bytes())
                (self.root / f"{ctx.key_id}.lender").write_text(lender + "\n")
                tmp.replace(self.root / f"{ctx.key_id}.ctx")
        return ctx

    def get(self, lender: str, key_id: str) -> PublicContext:
        with self._lock:
            entry = self._keys.get(key_id)
        if entry is None or entry[0] != lender:
            raise UnknownKey(f"key {key_id[:16]} is not registered for lender {lender}; run `fedscore lender register`")
        return entry[1]


def registry_tops(registry) -> Callable[[str], TopSpec]:
    """Top specs from :class:`coordinator.registry.ModelRegistry` (``weights_location['top_spec']``)."""

    def load(ref: str) -> TopSpec:
        from coordinator.registry import VersionNotFound

        try:
            version = registry.get(ref)
        except VersionNotFound:
            raise UnknownModel(f"model {ref!r} is not in the registry") from None
        spec = version.weights_location.get("top_spec")
        if spec is None or version.status != "ready":
            raise UnknownModel(f"model {ref!r} has no ready top model")
        return TopSpec.from_dict(spec)

    return load


class ResponderTransport(Protocol):
    """How the gateway reaches holders (swap in a fake for tests)."""

    def install_key(self, holder: Holder, public_context: bytes, timeout: float) -> str: ...

    def contribute(self, holder: Holder, request: pb.ContributeRequest, timeout: float) -> pb.ContributeResponse: ...


class GrpcResponderTransport:
    """Mutual-TLS channels to every responder, opened once and reused."""

    def __init__(
        self,
        tls: MutualTls,
        *,
        limits: ScoringLimits | None = None,
        interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = (),
    ) -> None:
        self._creds = tls.channel_credentials()
        self._limits = limits or ScoringLimits()
        self._interceptors = tuple(interceptors)
        self._stubs: dict[str, pb_grpc.ScoringResponderStub] = {}
        self._channels: list[grpc.Channel] = []
        self._lock = threading.Lock()

    def _stub(self, holder: Holder) -> pb_grpc.ScoringResponderStub:
        with self._lock:
            stub = self._stubs.get(holder.address)
            if stub is None:
                channel = grpc.secure_channel(holder.address, self._creds, options=grpc_options(self._limits))
                self._channels.append(channel)
                if self._interceptors:
                    channel = grpc.intercept_channel(channel, *self._interceptors)
                stub = self._stubs[holder.address] = pb_grpc.ScoringResponderStub(channel)
            return stub

    @staticmethod
    def _raise(err: grpc.RpcError) -> None:
        code = err.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise DeadlineExceeded("deadline exceeded") from None
        raise error_from_status(code.name, err.details() or "") from None

    def install_key(self, holder: Holder, public_context: bytes, timeout: float) -> str:
        s = Stamp.new()
        try:
            return self._stub(holder).InstallKey(
                pb.InstallKeyRequest(stamp=pb.Stamp(request_id=s.request_id, issued_at_ms=s.issued_at_ms),
                                     public_context=public_context),
                timeout=timeout,
            ).key_id
        except grpc.RpcError as err:
            self._raise(err)
            raise

    def contribute(self, holder: Holder, request: pb.ContributeRequest, timeout: float) -> pb.ContributeResponse:
        try:
            return self._stub(holder).Contribute(request, timeout=timeout)
        except grpc.RpcError as err:
            self._raise(err)
            raise

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


@dataclass
class _HolderResult:
    holder: Holder
    status: SourceStatus
    detail: str = ""
    vectors: list[EncryptedVector] | None = None
    refusals: dict[int, str] | None = None
    as_of: str = ""


class GatewayCore:
    """Request logic of the gateway without the gRPC server (tests drive it directly)."""

    def __init__(
        self,
        holders: Sequence[Holder],
        transport: ResponderTransport,
        tops: Mapping[str, TopSpec] | Callable[[str], TopSpec],
        *,
        keys: KeyStore | None = None,
        default_model: str = "",
        limits: ScoringLimits | None = None,
        workers: int = 16,
    ) -> None:
        if not holders:
            raise ValueError("a gateway needs at least one holder")
        self.holders = list(holders)
        self.transport = transport
        self._tops = tops
        self.limits = limits or ScoringLimits()
        self.keys = keys or KeyStore(limits=self.limits)
        self.default_model = default_model
        self._pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gateway-fanout")
        self._installed: set[tuple[str, str]] = set()
        self._top_cache: dict[str, TopSpec] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def register_key(self, lender: str, public_context: bytes) -> PublicContext:
        return self.keys.register(lender, public_context)

    def top(self, ref: str) -> TopSpec:
        """The top spec for ``ref``; versioned references are cached (registry versions are
        immutable once ready), so the registry is not read on the request path."""
        ref = ref or self.default_model
        if not ref:
            raise InvalidRequest("no model named and the gateway has no default model")
        spec = self._top_cache.get(ref)
        if spec is not None:
            return spec
        try:
            spec = self._tops[ref] if isinstance(self._tops, Mapping) else self._tops(ref)
        except KeyError:
            raise UnknownModel(f"model {ref!r} is not served by this gateway") from None
        if _VERSIONED.match(ref):
            self._top_cache[ref] = spec
        return spec

    def _ask(self, holder: Holder, ctx: PublicContext, request: pb.ContributeRequest, deadline: float,
             expect: int, n: int) -> _HolderResult:
        def remaining() -> float:
            left = min(deadline - time.monotonic(), self.limits.holder_timeout(n))
            if left <= 0.005:
                raise DeadlineExceeded("no time left")
            return left

        try:
            marker = (holder.name, ctx.key_id)
            if marker not in self._installed:
                self.transport.install_key(holder, ctx.to_bytes(), remaining())
                with self._lock:
                    self._installed.add(marker)
            try:
                reply = self.transport.contribute(holder, request, remaining())
            except UnknownKey:  # the responder restarted and forgot the key: install and retry once
                self.transport.install_key(holder, ctx.to_bytes(), remaining())
                reply = self.transport.contribute(holder, request, remaining())
            if request.as_of and reply.as_of != request.as_of:
                return _HolderResult(holder, SourceStatus.ERROR,
                                     f"answered for month {reply.as_of or '(none)'}, asked {request.as_of}")
            if len(reply.envelopes) != expect:
                return _HolderResult(holder, SourceStatus.ERROR, f"sent {len(reply.envelopes)} ciphertexts, expected {expect}")
            try:
                vectors = [EncryptedVector.from_bytes(bytes(e), ctx) for e in reply.envelopes]
            except KeyMismatch:
                return _HolderResult(holder, SourceStatus.ERROR, "ciphertext under another key")
            except CryptoError as exc:
                return _HolderResult(holder, SourceStatus.ERROR, f"malformed ciphertext: {exc}")
            refusals = {int(i): str(r) for i, r in reply.refusals.items() if 0 <= int(i) < n}
            return _HolderResult(holder, SourceStatus.CONTRIBUTED, vectors=vectors, refusals=refusals,
                                 as_of=reply.as_of)
        except MonthNotAvailable:
            raise  # the request's month, not this holder, is at fault: score() fails the request
        except DeadlineExceeded:
            return _HolderResult(holder, SourceStatus.TIMEOUT, "no answer before the deadline")
        except ServiceUnavailable:
            return _HolderResult(holder, SourceStatus.UNAVAILABLE, "responder unreachable")
        except ScoringError as exc:
            return _HolderResult(holder, SourceStatus.ERROR, f"{exc.status}: {exc}")

    def score(
        self,
        lender: str,
        key_id: str,
        model_ref: str,
        usccs: Sequence[str],
        grants: Sequence[str],
        *,
        timeout: float | None = None,
        request_id: str = "",
        purpose: str = "scoring",
        as_of: str = "",
    ) -> pb.ScoreResponse:
        """Fan out, evaluate, return the encrypted shares (raises a :class:`ScoringError`).
        ``purpose`` (``scoring`` or ``monitoring``) goes to every holder's consent check; ``as_of``
        (``YYYY-MM``, ``""`` = each holder's default) is the feature month every holder must use."""
        start = time.monotonic()
        deadline = start + (timeout if timeout is not None else self.limits.default_deadline_s) - 0.02
        if len(grants) != len(usccs):
            raise InvalidRequest("every subject needs a grant")
        codes = validate_subjects(usccs, grants, self.limits)
        purpose = scoring_purpose(purpose)
        month = feature_month(as_of)
        ctx = self.keys.get(lender, key_id)
        ref = model_ref or self.default_model
        spec = self.top(ref)
        need = depth_needed(spec)
        if ctx.info.depth < need:
            raise KeyNotUsable(f"model {ref} needs multiplicative depth {need}; key {key_id[:16]} has {ctx.info.depth}")
        n = len(codes)
        if n * spec.in_dim > ctx.slot_count * 64:
            raise RequestTooLarge(f"{n} enterprises exceed what one request may carry under this key")
        layout = layout_for(spec, n, ctx.slot_count)
        expect = 1 if layout == "packed" else spec.in_dim
        subjects = [pb.Subject(uscc=u, grant_json=g) for u, g in zip(codes, grants)]
        calls = []
        for holder in self.holders:
            s = Stamp.new()
            request = pb.ContributeRequest(
                stamp=pb.Stamp(request_id=s.request_id, issued_at_ms=s.issued_at_ms), key_id=ctx.key_id,
                model_ref=ref, lender=lender, layout=layout, subjects=subjects, purpose=purpose, as_of=month,
            )
            calls.append(self._pool.submit(self._ask, holder, ctx, request, deadline, expect, n))
        results: list[_HolderResult] = []
        refused: list[str] = []
        for holder, call in zip(self.holders, calls):
            try:
                results.append(call.result(timeout=max(deadline - time.monotonic(), 0.0) + 0.05))
            except futures.TimeoutError:
                results.append(_HolderResult(holder, SourceStatus.TIMEOUT, "no answer before the deadline"))
            except MonthNotAvailable as exc:
                refused.append(str(exc))
        if refused:
            raise MonthNotAvailable("; ".join(refused))
        for r in results:
            if r.holder.required and r.status is not SourceStatus.CONTRIBUTED:
                raise RequiredSourceUnavailable(f"required holder {r.holder.name} is {r.status.value}: {r.detail}")
        contributed = [r for r in results if r.status is SourceStatus.CONTRIBUTED]
        if not contributed:
            raise ServiceUnavailable("no holder answered")
        unscored = sorted({i for r in contributed if r.holder.required for i in (r.refusals or {})})
        if len(unscored) == n:
            reasons = {reason for r in contributed if r.holder.required for reason in (r.refusals or {}).values()}
            raise NotAuthorized(f"consent refused by the required holder: {', '.join(sorted(reasons))}")
        shares = evaluate_top(spec, [r.vectors for r in contributed], n)  # type: ignore[misc]
        sources = [
            pb.SourceReport(holder=r.holder.name, status=r.status.value, required=r.holder.required,
                            detail=r.detail, refusals=r.refusals or {}, as_of=r.as_of)
            for r in results
        ]
        return pb.ScoreResponse(
            request_id=request_id, model_ref=ref, key_id=ctx.key_id, count=n,
            shares=[pb.Share(envelope=s.vector.to_bytes(), blocks=s.blocks, sign=s.sign) for s in shares],
            sources=sources, unscored=unscored,
        )


class GatewayService(pb_grpc.ScoringGatewayServicer):
    """gRPC face of :class:`GatewayCore`: lender identity from its certificate, replay guard."""

    def __init__(self, core: GatewayCore, *, refused_callers: Sequence[str] = (GATEWAY_NAME,)) -> None:
        self.core = core
        self.refused = frozenset(refused_callers)
        self.replay = ReplayGuard(core.limits.replay_window_s)

    def _admit(self, stamp: pb.Stamp, context: grpc.ServicerContext) -> str:
        lender = peer_name(context)
        if lender is None or lender in self.refused:
            raise NotAuthorized("caller has no lender certificate")
        self.replay.check(lender, stamp.request_id, stamp.issued_at_ms)
        return lender

    def RegisterKey(self, request: pb.RegisterKeyRequest, context: grpc.ServicerContext) -> pb.RegisterKeyResponse:
        with rpc_errors(context, "RegisterKey", log):
            lender = self._admit(request.stamp, context)
            ctx = self.core.register_key(lender, request.public_context)
            return pb.RegisterKeyResponse(key_id=ctx.key_id, slot_count=ctx.slot_count, depth=ctx.info.depth)
        raise AssertionError("unreachable")

    def Score(self, request: pb.ScoreRequest, context: grpc.ServicerContext) -> pb.ScoreResponse:
        with rpc_errors(context, "Score", log):
            lender = self._admit(request.stamp, context)
            return self.core.score(
                lender, request.key_id, request.model_ref,
                [s.uscc for s in request.subjects], [s.grant_json for s in request.subjects],
                timeout=context.time_remaining(), request_id=request.stamp.request_id, purpose=request.purpose,
                as_of=request.as_of,
            )
        raise AssertionError("unreachable")


@dataclass
class RunningGateway(RunningService):
    core: GatewayCore

    def close(self) -> None:
        self.core.close()


def serve_gateway(
    core: GatewayCore,
    address: str,
    tls: MutualTls,
    *,
    workers: int = 8,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
) -> RunningGateway:
    """Start the gateway on ``address`` with mutual TLS; returns at once (call ``.wait()``)."""
    server, port = start_server(
        "scoring gateway", address, tls, core.limits,
        lambda server: pb_grpc.add_ScoringGatewayServicer_to_server(GatewayService(core), server),
        workers=workers, thread_name_prefix="gateway", interceptors=interceptors,
    )
    return RunningGateway(server, port, core)


def holders_from_consortium(cfg) -> list[Holder]:
    """Holders with a scoring address; the label holder is required."""
    return [
        Holder(p.name, p.scoring_address, required=p.holds_labels)
        for p in cfg.participants
        if p.holds_data and p.scoring_address
    ]


__all__ += ["RunningGateway", "holders_from_consortium"]
