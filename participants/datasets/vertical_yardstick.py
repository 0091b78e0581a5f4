"""Centralised yardsticks on exactly the rows a federated vertical run trained and held out.

PSI lays the label holder's rows out in a fresh secret order every run, and the schedule takes
its validation rows by position, so a run's held-out set cannot be re-derived from the data
alone. The label holder keeps the record (:meth:`LocalModelStore.load_evaluation`: its ids in
universe order, and the federated logits of the validation rows). With it and the plan, this
module rebuilds the same universe, the same :class:`Schedule` (same training rows, same batches)
and each party's inputs with the same preprocessing, then trains centrally:

* ``pooled`` — one bottom over every holder's features (the same recipe: plan, top, schedule);
* ``<holder> alone`` — one bottom over a single holder's features, labels as if it held them;
* optionally the baseline logistic regression and MLP trained to convergence (early stopping) on
  the same training rows, as a check that the recipe is not the weak link.

It reads every holder's data, so it is for public benchmark data and synthetic consortiums only,
never for a real consortium.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from models.metrics import evaluate
from models.training import torch_threads
from participants.datasets.baseline import POOLED, ModelName, fit_predict
from participants.datastore import holder_data
from participants.model_store import LocalModelStore
from protocols.consortium import ConsortiumConfig
from protocols.errors import ProtocolViolation
from protocols.scoring import sigmoid
from protocols.vertical import Schedule, VerticalPlan, bottom_inputs, train_alone

FEDERATED = "federated"
RECIPE = "split recipe"


class YardstickRow(BaseModel):
    """One model's held-out figures (JSON-ready)."""

    model_config = ConfigDict(frozen=True)

    features: str
    model: str
    auc: float
    ks: float
    gini: float
    n_val: int
    val_positives: int
    seconds: float


@dataclass(frozen=True)
class RunRecord:
    """What the label holder kept of one federated run."""

    ref: str
    plan: VerticalPlan
    universe_ids: np.ndarray
    val_logits: np.ndarray

    @classmethod
    def load(cls, label_holder_models: str | Path, ref: str) -> "RunRecord":
        store = LocalModelStore(label_holder_models)
        meta = store.load_bottom(ref).meta
        evaluation = store.load_evaluation(ref)
        return cls(ref, VerticalPlan.model_validate(meta["plan"]), evaluation["universe_ids"].astype(str),
                   evaluation["val_logits"].reshape(-1))


@dataclass(frozen=True)
class AlignedData:
    """Every holder's preprocessed inputs in the run's universe order, and the labels."""

    schedule: Schedule
    labels: np.ndarray
    inputs: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    label_holder: str


def align(cfg: ConsortiumConfig, record: RunRecord, as_of: str | None = None) -> AlignedData:
    """Rebuild the run's universe from the holders' own data (read centrally)."""
    universe = record.universe_ids
    schedule = Schedule.build(record.plan, universe.size)
    if record.val_logits.size != schedule.val.size:
        raise ProtocolViolation(f"{record.ref}: {record.val_logits.size} validation scores, the plan holds out "
                                f"{schedule.val.size} of {universe.size}")
    inputs, present, labels, label_holder = {}, {}, None, ""
    for p in cfg.data_holders:
        frame, y = holder_data(cfg, p, as_of)
        rows = frame.index.get_indexer(universe)
        known = rows >= 0
        x = np.full((universe.size, frame.shape[1]), np.nan)
        x[known] = frame.to_numpy(dtype=np.float64)[rows[known]]
        _, inputs[p.name] = bottom_inputs(x, known, [str(c) for c in frame.columns], schedule)
        present[p.name] = known
        if p.holds_labels:
            if y is None or not known.all():
                raise ProtocolViolation(f"{record.ref}: label holder {p.name!r} no longer holds every universe row")
            labels, label_holder = y.to_numpy(dtype=np.float64)[rows], p.name
    if labels is None:
        raise ProtocolViolation(f"{cfg.name}: no label holder")
    return AlignedData(schedule, labels, inputs, present, label_holder)


def _row(features: str, model: str, y: np.ndarray, scores: np.ndarray, started: float) -> YardstickRow:
    m = evaluate(y, scores)
    return YardstickRow(features=features, model=model, auc=m.auc, ks=m.ks, gini=m.gini, n_val=m.n,
                        val_positives=m.positives, seconds=round(time.perf_counter() - started, 3))


def recipe_pd(data: AlignedData, plan: VerticalPlan, x: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Validation PDs of one bottom (over ``x``) + the plan's top, trained centrally on the run's schedule."""
    with torch_threads(1):
        party, top = train_alone(x, present, data.labels, plan)
        return sigmoid(top.logits(party.embed(data.schedule.val)).reshape(-1))


def yardsticks(
    data: AlignedData,
    record: RunRecord,
    *,
    baselines: tuple[ModelName, ...] = (),
    progress: Callable[[str], None] | None = None,
) -> tuple[list[YardstickRow], dict[str, np.ndarray]]:
    """Federated (as run) first, then pooled and each holder alone; also the validation PDs by row
    name (``pooled``, ``bank alone``, …; baselines as ``pooled (logistic)``)."""
    note = progress or (lambda _m: None)
    val, train = data.schedule.val, data.schedule.train
    y_val = data.labels[val]
    started = time.perf_counter()
    pds = {FEDERATED: sigmoid(record.val_logits)}
    rows = [_row(FEDERATED, "as run", y_val, pds[FEDERATED], started)]
    order = [data.label_holder, *[n for n in data.inputs if n != data.label_holder]]
    sets = [(POOLED, np.hstack([data.inputs[n] for n in order]), np.ones(data.labels.size, dtype=bool))]
    sets += [(f"{n} alone", data.inputs[n], data.present[n]) for n in order]
    for name, x, present in sets:
        note(f"{name}: {RECIPE}")
        started = time.perf_counter()
        pds[name] = recipe_pd(data, record.plan, x, present)
        rows.append(_row(name, RECIPE, y_val, pds[name], started))
        for model in baselines:
            note(f"{name}: {model}")
            started = time.perf_counter()
            pds[f"{name} ({model})"] = fit_predict(model, x[train], data.labels[train], x[val], record.plan.seed)
            rows.append(_row(name, model, y_val, pds[f"{name} ({model})"], started))
    return rows, pds


__all__ = ["AlignedData", "RunRecord", "YardstickRow", "align", "recipe_pd", "yardsticks"]
