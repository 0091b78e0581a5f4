"""What the monitor scores with: the encrypted lender SDK in production, or a plaintext reference.

:class:`Scorer` is the one interface the monitor needs. :class:`SdkScorer` sends the watchlist in
slot-sized batches through :class:`participants.lender.LenderClient` (holders encrypt, the gateway
evaluates the top homomorphically, only this lender decrypts). :class:`PlaintextScorer` computes the
same model in process from bottoms, top and features: the early-warning evaluation uses it because
it scores 12 months × thousands of firms × 2 models on a synthetic consortium, where the encrypted
path would only add minutes of CKKS work without changing a PD beyond 1e-4 (a test checks that).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from models.split import TopSpec, evaluate_top
from participants.lender import LenderClient
from participants.monitoring.watchlist import ScoreRecord
from protocols.consent import Purpose
from protocols.scoring import ScoreResult, ScoreScale, grade_for, sigmoid


class Scorer(Protocol):
    """Scores ``(uscc, grant JSON)`` pairs for month ``as_of``; results in input order."""

    def score(self, subjects: Sequence[tuple[str, str]], as_of: str) -> list[ScoreRecord]: ...


def record_from_result(result: ScoreResult) -> ScoreRecord:
    """The record of one result, under the feature month the holders reported."""
    return ScoreRecord(uscc=result.uscc, as_of=result.as_of, scored=result.scored, pd=result.pd, logit=result.logit,
                       score=result.score, grade=result.grade, model_ref=result.model_ref, sources=result.sources,
                       missing=dict(result.missing))


class SdkScorer:
    """Encrypted scoring through the lender SDK.

    Requests carry purpose ``monitoring``: the holders check each enterprise's monitoring grant
    (a ``scoring`` grant is refused as ``wrong_purpose``) and the month ``as_of``: every holder
    scores with its features as of that month (a month beyond a holder's data fails the run with
    ``MonthNotAvailable``), and each record carries the month the holders reported. Per-source
    contributions are not available on this path: the gateway returns only the encrypted total.
    """

    def __init__(self, client: LenderClient, *, batch: int | None = None, parallel: int = 2) -> None:
        self.client = client
        self.batch = batch
        self.parallel = parallel

    def score(self, subjects: Sequence[tuple[str, str]], as_of: str) -> list[ScoreRecord]:
        if not subjects:
            return []
        results = self.client.score_batch(list(subjects), chunk=self.batch, parallel=self.parallel,
                                          purpose=Purpose.MONITORING.value, as_of=as_of)
        return [record_from_result(r) for r in results]


class Bottom(Protocol):
    """A holder's bottom model with its preprocessing (``participants.model_store.StoredBottom``)."""

    feature_names: list[str]

    def embed(self, features: pd.DataFrame) -> np.ndarray: ...


FeatureSource = Callable[[str], Mapping[str, pd.DataFrame]]
"""month -> each holder's features as of that month (indexed by USCC)."""


class PlaintextScorer:
    """The split model evaluated in the clear, in one process (reference and evaluation only).

    ``explain``: also return each source's contribution to the logit — exact for a linear top
    (``b_i · w``), leave-one-source-out for a polynomial one. Pass it only where the consortium's
    explanation policy allows per-source contributions.
    """

    def __init__(self, bottoms: Mapping[str, Bottom], top: TopSpec, features: FeatureSource, *,
                 model_ref: str = "", scale: ScoreScale | None = None, explain: bool = False) -> None:
        self.bottoms = dict(bottoms)
        self.top = top
        self.features = features
        self.model_ref = model_ref
        self.scale = scale or ScoreScale()
        self.explain = explain

    def embeddings(self, usccs: Sequence[str], as_of: str) -> dict[str, np.ndarray]:
        """Each holder's bottom outputs (rows × d); zero rows for enterprises a holder lacks."""
        frames = self.features(as_of)
        out = {}
        for name, bottom in self.bottoms.items():
            block = np.zeros((len(usccs), self.top.in_dim))
            frame = frames.get(name)
            if frame is not None and len(frame):
                rows = frame.index.get_indexer(pd.Index(usccs))
                known = np.flatnonzero(rows >= 0)
                if known.size:
                    block[known] = bottom.embed(frame.iloc[rows[known]])
            out[name] = block
        return out

    def logits(self, usccs: Sequence[str], as_of: str) -> np.ndarray:
        return evaluate_top(self.top, sum(self.embeddings(usccs, as_of).values()))

    def score(self, subjects: Sequence[tuple[str, str]], as_of: str) -> list[ScoreRecord]:
        usccs = [u for u, _ in subjects]
        if not usccs:
            return []
        parts = self.embeddings(usccs, as_of)
        z = sum(parts.values())
        logits = evaluate_top(self.top, z)
        contributions = self._contributions(parts, z, logits) if self.explain else None
        pds = sigmoid(logits)
        sources = tuple(self.bottoms)
        return [
            ScoreRecord(uscc=u, as_of=as_of, scored=True, pd=float(p), logit=float(lg), score=self.scale.score(p),
                        grade=grade_for(p), model_ref=self.model_ref, sources=sources,
                        contributions=None if contributions is None else
                        {name: float(c[i]) for name, c in contributions.items()})
            for i, (u, p, lg) in enumerate(zip(usccs, pds, logits))
        ]

    def _contributions(self, parts: Mapping[str, np.ndarray], z: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
        if self.top.kind == "linear":
            return {name: block @ self.top.w2 for name, block in parts.items()}
        return {name: logits - evaluate_top(self.top, z - block) for name, block in parts.items()}
