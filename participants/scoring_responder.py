"""Scoring responder: a data holder's long-lived gRPC service that answers the gateway with
ciphertexts only.

For each request it checks consent for the whole batch in one call (the request's purpose,
``scoring`` unless the lender asked for ``monitoring``, and the lender the gateway authenticated), looks the enterprises up in its precomputed bottom outputs, and encrypts the
(n × d) block under the lender's public context: a zero row for an enterprise it may not use or
does not know, so the reply has the same shape and cost either way and says nothing about whether
the holder knows the enterprise. Only consent refusal reasons travel in clear; they depend only on
the grant and the request.

Bottom outputs are computed per (model, feature month) on first use and cached
(``EmbeddingTable``; :class:`MonthlyEmbeddings` keeps the default month and the few most recently
asked others): a request then costs a dictionary lookup and the encryption. A request names the
feature month (``as_of``, ``""`` = this holder's default); the reply says which month was used, and
a month this holder cannot serve (beyond or before its data, malformed, or any month but the
default for data without months) is refused with :class:`protocols.scoring.MonthNotAvailable`.
Only the gateway (certificate common name ``scoring-gateway`` by default) may call; every request
carries a fresh stamp (replay guard).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import numpy as np
import pandas as pd

from crypto.ckks_keys import PublicContext, encrypt_columns, encrypt_vector
from crypto.errors import CryptoError
from participants.datastore import LocalDataStore
from participants.features.build import MONTH_IDX
from participants.model_store import LocalModelStore, ModelStoreError
from protocols._grpc import scoring_pb2 as pb
from protocols._grpc import scoring_pb2_grpc as pb_grpc
from protocols.consent import ConsentDecision, Purpose
from protocols.errors import InvalidUSCC
from protocols.feature_schemas import month_index, month_str
from protocols.scoring import (
    InvalidRequest,
    MonthNotAvailable,
    MutualTls,
    NotAuthorized,
    ReplayGuard,
    RequestTooLarge,
    RunningService,
    ScoringLimits,
    UnknownKey,
    UnknownModel,
    feature_month,
    peer_name,
    rpc_errors,
    scoring_purpose,
    start_server,
)
from protocols.uscc import validate_uscc

__all__ = [
    "ConsentChecker", "EmbeddingTable", "EmbeddingSource", "FixedEmbeddings", "MonthlyEmbeddings", "ZeroPool",
    "ResponderCore", "ResponderService", "serve_responder", "RunningServer",
]

log = logging.getLogger(__name__)

GATEWAY_NAME = "scoring-gateway"


class ConsentChecker(Protocol):
    """What the responder needs of :class:`participants.consent.ConsentGuard`: one batch check per
    request (``(grant, enterprise)`` pairs, decisions in order)."""

    def check_many(
        self, requests: Sequence[tuple[str, str]], *, lender: str, purpose, holder: str
    ) -> list[ConsentDecision]: ...


@dataclass(frozen=True)
class EmbeddingTable:
    """Bottom outputs of every enterprise this holder knows, for one model version and the features
    as of one month (``as_of``; ``""`` when unknown or the data has no months)."""

    ref: str
    index: Mapping[str, int]
    matrix: np.ndarray  # rows × out_dim
    as_of: str = ""

    @property
    def out_dim(self) -> int:
        return int(self.matrix.shape[1])

    @classmethod
    def build(cls, store: LocalModelStore, ref: str, features: pd.DataFrame, *, as_of: str = "") -> "EmbeddingTable":
        bottom = store.load_bottom(ref)
        matrix = bottom.embed(features) if len(features) else np.zeros((0, bottom.model.out_dim))
        return cls(ref, {str(u): i for i, u in enumerate(features.index)}, np.asarray(matrix, dtype=np.float64), as_of)

    def lookup(self, usccs: Sequence[str], allowed: Sequence[bool]) -> np.ndarray:
        out = np.zeros((len(usccs), self.out_dim), dtype=np.float64)
        for i, (u, ok) in enumerate(zip(usccs, allowed)):
            row = self.index.get(u) if ok else None
            if row is not None:
                out[i] = self.matrix[row]
        return out


class EmbeddingSource:
    """Where a responder's bottom outputs come from. ``default_month`` serves requests naming no
    month; ``span()`` is the (first, last) month the data covers, or None when only the default can
    be served (``one_frame`` says why). :meth:`table` is asked only for months
    :meth:`ResponderCore.month` accepted; an unknown model raises ``KeyError`` or :class:`ModelStoreError`."""

    default_month: str = ""
    one_frame: str = "it holds one precomputed frame of features"

    def span(self) -> tuple[str, str] | None:
        return None

    def refresh(self) -> bool:
        """Look for data newer than :meth:`span` (True when the span may have moved)."""
        return False

    def table(self, ref: str, month: str) -> EmbeddingTable:
        raise NotImplementedError


class FixedEmbeddings(EmbeddingSource):
    """Tables computed elsewhere for one month (``as_of``, ``""`` when unknown): by model reference,
    or a callable loading one on first use."""

    def __init__(self, models: Mapping[str, EmbeddingTable] | Callable[[str], EmbeddingTable], as_of: str = "") -> None:
        self._models = models
        self._cache: dict[str, EmbeddingTable] = {}
        if not as_of and isinstance(models, Mapping):
            months = {t.as_of for t in models.values()}
            as_of = months.pop() if len(months) == 1 else ""
        self.default_month = as_of

    def table(self, ref: str, month: str) -> EmbeddingTable:
        table = self._cache.get(ref)
        if table is None:
            table = self._cache[ref] = self._models[ref] if isinstance(self._models, Mapping) else self._models(ref)
        return table


class MonthlyEmbeddings(EmbeddingSource):
    """Bottom outputs per (model, month) from the holder's own data, computed on first use.

    The default month (the data store's ``default_as_of``, else its latest month) is kept for good;
    of the other months, the ``max_months`` most recently asked are kept (tables of every model of
    an evicted month go together). Thread-safe: concurrent first requests for the same (model, month)
    compute it once, and a request for a cached month never waits for another month being built.
    Data without months (``custom`` schemas) has one frame, served as the default month only.
    """

    def __init__(self, bottoms: LocalModelStore, data: LocalDataStore, *, refs: Sequence[str] | None = None,
                 max_months: int = 3) -> None:
        if max_months < 0:
            raise ValueError("max_months must be >= 0")
        self._bottoms = bottoms
        self._data = data
        self.refs = frozenset(refs) if refs is not None else None
        self.max_months = max_months
        self._span: tuple[str, str] | None = None
        self._tables: OrderedDict[tuple[str, str], EmbeddingTable] = OrderedDict()
        self._pending: dict[tuple[str, str], Future] = {}
        self._lock = threading.Lock()
        if data.schema.kind == "custom":
            self.one_frame = "its data has no months (custom schema)"
            self.default_month = data.default_as_of or ""
        else:
            self._read_span()

    def _read_span(self) -> None:
        latest = self._data.latest_month()  # DataError when the holder has no records
        assert latest is not None
        self._span = (month_str(int(self._data.records[MONTH_IDX].min())), latest)
        self.default_month = self._data.default_as_of or latest

    def span(self) -> tuple[str, str] | None:
        return self._span

    def refresh(self) -> bool:
        """Re-read the holder's data when its records file changed (a new month arrived), so
        monitoring goes on month after month without restarting the responder; every table built
        from the old file is dropped (a rewritten file may restate past months)."""
        if self._span is None:
            return False
        with self._lock:
            if not self._data.refresh():
                return False
            self._tables.clear()
            self._read_span()
        return True

    def cached(self) -> list[tuple[str, str]]:
        """(month, model) pairs held, least recently used first."""
        with self._lock:
            return list(self._tables)

    def table(self, ref: str, month: str) -> EmbeddingTable:
        key = (month, ref)
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
                return table
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = Future()
        if not owner:
            return pending.result()
        try:
            table = self._build(ref, month)
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            pending.set_exception(exc)
            raise
        with self._lock:
            self._tables[key] = table
            del self._pending[key]
            self._evict()
        pending.set_result(table)
        return table

    def _build(self, ref: str, month: str) -> EmbeddingTable:
        if self.refs is not None and ref not in self.refs:
            raise KeyError(ref)
        features = self._data.features(month if self._span is not None else None)
        return EmbeddingTable.build(self._bottoms, ref, features, as_of=month)

    def _evict(self) -> None:
        others = list(dict.fromkeys(m for m, _ in self._tables if m != self.default_month))  # LRU first
        for month in others[: max(0, len(others) - self.max_months)]:
            for key in [k for k in self._tables if k[0] == month]:
                del self._tables[key]


class ZeroPool:
    """Encryptions of zero made ahead of time, each used once: a request's encryption becomes
    ``Enc(0) + encode(m)`` (fresh randomness, as secure as encrypting ``m``), taking the costly part
    of CKKS encryption off the latency path of single-enterprise requests."""

    def __init__(self, target: int = 4) -> None:
        self.target = target
        self._pools: dict[tuple[str, int], list] = {}
        self._contexts: dict[str, PublicContext] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def take(self, ctx: PublicContext, length: int):
        """A fresh Enc(0) of ``length`` slots, or None (and a refill is scheduled)."""
        key = (ctx.key_id, length)
        with self._lock:
            pool = self._pools.setdefault(key, [])
            self._contexts[ctx.key_id] = ctx
            zero = pool.pop() if pool else None
            if self._thread is None and self.target > 0:
                self._thread = threading.Thread(target=self._refill, name="zero-pool", daemon=True)
                self._thread.start()
        self._wake.set()
        return zero

    def _refill(self) -> None:
        while not self._closed:
            self._wake.wait(1.0)
            self._wake.clear()
            while not self._closed:
                with self._lock:
                    todo = next(((k, self._contexts[k[0]]) for k, p in self._pools.items() if len(p) < self.target), None)
                if todo is None:
                    break
                (key_id, length), ctx = todo
                zero = encrypt_vector(ctx, np.zeros(length))
                with self._lock:
                    self._pools.setdefault((key_id, length), []).append(zero)

    def drop(self, key_id: str) -> None:
        with self._lock:
            for k in [k for k in self._pools if k[0] == key_id]:
                del self._pools[k]
            self._contexts.pop(key_id, None)

    def close(self) -> None:
        self._closed = True
        self._wake.set()


class ResponderCore:
    """One holder's request logic without transport (tests drive it directly)."""

    def __init__(
        self,
        name: str,
        models: EmbeddingSource | Mapping[str, EmbeddingTable] | Callable[[str], EmbeddingTable],
        consent: ConsentChecker,
        *,
        limits: ScoringLimits | None = None,
        max_keys: int = 64,
        zero_pool: int = 4,
    ) -> None:
        self.name = name
        self.limits = limits or ScoringLimits()
        self.embeddings = models if isinstance(models, EmbeddingSource) else FixedEmbeddings(models)
        self._consent = consent
        self._keys: OrderedDict[str, PublicContext] = OrderedDict()
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self.zeros = ZeroPool(zero_pool)

    def close(self) -> None:
        self.zeros.close()

    # keys ------------------------------------------------------------------------------------
    def install_key(self, public_context: bytes) -> str:
        if len(public_context) > self.limits.max_context_bytes:
            raise RequestTooLarge(f"public context of {len(public_context)} bytes exceeds {self.limits.max_context_bytes}")
        try:
            ctx = PublicContext.from_bytes(public_context)
        except CryptoError as exc:
            raise InvalidRequest(f"public context refused: {exc}") from None
        with self._lock:
            self._keys[ctx.key_id] = ctx
            self._keys.move_to_end(ctx.key_id)
            while len(self._keys) > self._max_keys:
                self.zeros.drop(self._keys.popitem(last=False)[0])
        return ctx.key_id

    def key(self, key_id: str) -> PublicContext:
        with self._lock:
            ctx = self._keys.get(key_id)
        if ctx is None:
            raise UnknownKey(f"key {key_id[:16]} is not installed at {self.name}")
        return ctx

    def month(self, as_of: str = "") -> str:
        """The feature month a request naming ``as_of`` is served with (``""``: the default month),
        or :class:`MonthNotAvailable` naming the month and this holder."""
        try:
            asked = feature_month(as_of)
        except MonthNotAvailable as exc:
            raise MonthNotAvailable(f"{exc} (asked of {self.name})") from None
        default = self.embeddings.default_month
        month = asked or default
        span = self.embeddings.span()
        if span is None:
            if month != default:
                raise MonthNotAvailable(
                    f"month {month} is not served by {self.name}: {self.embeddings.one_frame}, "
                    f"served {f'as of {default}' if default else 'to requests naming no month'} only")
            return month
        first, last = span
        if month_index(month) > month_index(last) and self.embeddings.refresh():
            month = asked or self.embeddings.default_month
            span = self.embeddings.span()
            assert span is not None
            first, last = span
        if month_index(month) > month_index(last):
            raise MonthNotAvailable(f"month {month} is beyond {self.name}'s data, which ends at {last}")
        if month_index(month) < month_index(first):
            raise MonthNotAvailable(f"month {month} is before {self.name}'s data, which starts at {first}")
        return month

    def model(self, ref: str, as_of: str = "") -> EmbeddingTable:
        """Bottom outputs of model ``ref`` for the month :meth:`month` serves ``as_of`` with."""
        month = self.month(as_of)
        try:
            return self.embeddings.table(ref, month)
        except (KeyError, ModelStoreError):
            raise UnknownModel(f"model {ref!r} is not available at {self.name}") from None

    # requests --------------------------------------------------------------------------------
    def contribute(
        self, *, key_id: str, model_ref: str, lender: str, layout: str, usccs: Sequence[str], grants: Sequence[str],
        purpose: str = Purpose.SCORING.value, as_of: str = "",
    ) -> tuple[list[bytes], int, dict[int, str]]:
        """Encrypted bottom outputs for a batch, and the consent refusals by subject index; every
        grant must authorise ``purpose`` (``scoring`` or ``monitoring``). Features are those as of
        :meth:`month` ``(as_of)``."""
        purpose = scoring_purpose(purpose)
        if layout not in ("packed", "columns"):
            raise InvalidRequest(f"layout {layout!r} is not 'packed' or 'columns'")
        if len(usccs) > self.limits.max_subjects:
            raise RequestTooLarge(f"{len(usccs)} enterprises in one request; at most {self.limits.max_subjects}")
        if not usccs:
            raise InvalidRequest("request names no enterprise")
        ctx = self.key(key_id)
        table = self.model(model_ref, as_of)
        codes: list[str] = []
        for i, code in enumerate(usccs):
            try:
                codes.append(validate_uscc(code))
            except InvalidUSCC as exc:
                raise InvalidRequest(f"subject {i}: invalid USCC: {exc.rule}") from None
        decisions = self._consent.check_many(
            list(zip(grants, codes, strict=True)), lender=lender, purpose=purpose, holder=self.name
        )
        allowed = [d.allowed for d in decisions]
        refusals = {
            i: d.reason.value if d.reason is not None else "refused" for i, d in enumerate(decisions) if not d.allowed
        }
        block = table.lookup(codes, allowed)
        if layout == "packed":
            flat = block.T.ravel()
            zero = self.zeros.take(ctx, flat.size) if len(codes) == 1 else None
            vector = zero.add_plain(flat) if zero is not None else encrypt_vector(ctx, flat)
            envelopes = [vector.to_bytes()]
        else:
            envelopes = [v.to_bytes() for v in encrypt_columns(ctx, block)]
        return envelopes, table.out_dim, refusals


class ResponderService(pb_grpc.ScoringResponderServicer):
    """gRPC face of :class:`ResponderCore`: caller authorisation, replay guard, status mapping."""

    def __init__(self, core: ResponderCore, *, allowed_callers: Sequence[str] = (GATEWAY_NAME,)) -> None:
        self.core = core
        self.allowed = frozenset(allowed_callers)
        self.replay = ReplayGuard(core.limits.replay_window_s)

    def _admit(self, stamp: pb.Stamp, context: grpc.ServicerContext) -> str:
        caller = peer_name(context)
        if caller is None or caller not in self.allowed:
            raise NotAuthorized("only the scoring gateway may call a responder")
        self.replay.check(caller, stamp.request_id, stamp.issued_at_ms)
        return caller

    def InstallKey(self, request: pb.InstallKeyRequest, context: grpc.ServicerContext) -> pb.InstallKeyResponse:
        with rpc_errors(context, "InstallKey", log):
            self._admit(request.stamp, context)
            return pb.InstallKeyResponse(key_id=self.core.install_key(request.public_context))
        raise AssertionError("unreachable")

    def Contribute(self, request: pb.ContributeRequest, context: grpc.ServicerContext) -> pb.ContributeResponse:
        with rpc_errors(context, "Contribute", log):
            self._admit(request.stamp, context)
            month = self.core.month(request.as_of)
            envelopes, out_dim, refusals = self.core.contribute(
                key_id=request.key_id,
                model_ref=request.model_ref,
                lender=request.lender,
                layout=request.layout,
                usccs=[s.uscc for s in request.subjects],
                grants=[s.grant_json for s in request.subjects],
                purpose=request.purpose,
                as_of=request.as_of,
            )
            return pb.ContributeResponse(holder=self.core.name, envelopes=envelopes, out_dim=out_dim,
                                         refusals=refusals, as_of=month)
        raise AssertionError("unreachable")


@dataclass
class RunningServer(RunningService):
    """A started gRPC server and the port it bound (0 in the address = pick a free port)."""

    extra: dict = field(default_factory=dict)

    def close(self) -> None:
        core = self.extra.get("core")
        if core is not None:
            core.close()


def serve_responder(
    core: ResponderCore,
    address: str,
    tls: MutualTls,
    *,
    allowed_callers: Sequence[str] = (GATEWAY_NAME,),
    workers: int = 8,
) -> RunningServer:
    """Start the responder on ``address`` with mutual TLS; returns at once (call ``.wait()``)."""
    server, port = start_server(
        "scoring responder", address, tls, core.limits,
        lambda server: pb_grpc.add_ScoringResponderServicer_to_server(
            ResponderService(core, allowed_callers=allowed_callers), server
        ),
        workers=workers, thread_name_prefix=f"responder-{core.name}",
    )
    return RunningServer(server, port, {"core": core})
