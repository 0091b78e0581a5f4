"""A participant's local model store: its bottom models never leave the node.

Each trained version lives in ``<root>/<name>/v<version>/`` as ``bottom.npz`` (weights, plain
arrays — no pickle) and ``bottom.json`` (architecture, the fitted preprocessor, feature names and
metadata); the label holder adds ``evaluation.npz``, its record of the run's train/validation
split and validation scores. Writes go to a temporary folder renamed into place, so a crash never leaves half a model.
The reference ``name:vN`` is the one the coordinator's registry uses for the same training run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from models.preprocessing import Preprocessor
from models.split import BottomModel
from protocols.errors import ProtocolError

EVALUATION_FILE = "evaluation.npz"
_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,63}):v(?P<version>[0-9]{1,9})$")


class ModelStoreError(ProtocolError):
    """The local model store cannot find or read a model."""


def _split_ref(ref: str) -> tuple[str, str]:
    match = _REF.match(ref)
    if match is None:
        raise ModelStoreError(f"model reference {ref!r} is not of the form name:vN")
    return match["name"], f"v{int(match['version'])}"


@dataclass(frozen=True)
class StoredBottom:
    """A loaded bottom model with everything needed to turn raw features into its output."""

    ref: str
    model: BottomModel
    preprocessor: Preprocessor
    feature_names: list[str]
    meta: dict[str, Any]

    def embed(self, features: pd.DataFrame) -> np.ndarray:
        """Bottom outputs (rows × out_dim, float64) for a feature frame holding this model's columns."""
        missing = [c for c in self.feature_names if c not in features.columns]
        if missing:
            raise ModelStoreError(f"{self.ref}: feature frame lacks column(s) {missing[:5]}")
        x = self.preprocessor.transform(features[self.feature_names].to_numpy(dtype=np.float64))
        with torch.no_grad():
            return self.model(torch.as_tensor(x, dtype=torch.float32)).numpy().astype(np.float64)


class LocalModelStore:
    """Versioned bottom models under ``root`` (the participant's own state folder)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, ref: str) -> Path:
        name, version = _split_ref(ref)
        return self.root / name / version

    def save_bottom(
        self,
        ref: str,
        model: BottomModel,
        preprocessor: Preprocessor,
        feature_names: list[str],
        meta: dict[str, Any] | None = None,
        *,
        evaluation: Mapping[str, np.ndarray] | None = None,
    ) -> Path:
        """Store a version atomically; ``evaluation`` is the label holder's validation record."""
        target = self.path(ref)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        try:
            state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
            np.savez(tmp / "bottom.npz", **state)
            doc = {
                "ref": ref,
                "in_features": model.in_features,
                "out_dim": model.out_dim,
                "hidden": list(model.hidden),
                "feature_names": list(feature_names),
                "preprocessor": preprocessor.model_dump(mode="json"),
                "meta": meta or {},
            }
            (tmp / "bottom.json").write_text(json.dumps(doc, indent=1))
            if evaluation is not None:
                np.savez(tmp / EVALUATION_FILE, **{k: np.asarray(v) for k, v in evaluation.items()})
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def load_bottom(self, ref: str) -> StoredBottom:
        folder = self.path(ref)
        try:
            doc = json.loads((folder / "bottom.json").read_text())
            with np.load(folder / "bottom.npz", allow_pickle=False) as arrays:
                state = {k: torch.as_tensor(arrays[k]) for k in arrays.files}
        except FileNotFoundError:
            raise ModelStoreError(f"no bottom model {ref!r} in {self.root}") from None
        except (ValueError, OSError, json.JSONDecodeError) as exc:
            raise ModelStoreError(f"bottom model {ref!r} in {self.root} is unreadable: {exc}") from None
        model = BottomModel(doc["in_features"], doc["out_dim"], doc["hidden"] or None)
        model.load_state_dict(state)
        model.eval()
        return StoredBottom(
            ref=ref,
            model=model,
            preprocessor=Preprocessor.model_validate(doc["preprocessor"]),
            feature_names=list(doc["feature_names"]),
            meta=dict(doc.get("meta", {})),
        )

    def load_evaluation(self, ref: str) -> dict[str, np.ndarray]:
        """The label holder's validation record of ``ref``: its ids in the run's universe order
        (``universe_ids``, which with the plan fixes the train/validation split) and the federated
        logits of the validation rows (``val_logits``). For model validation at the label holder."""
        path = self.path(ref) / EVALUATION_FILE
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {k: arrays[k] for k in arrays.files}
        except FileNotFoundError:
            raise ModelStoreError(f"{ref!r} in {self.root} has no validation record (only the label holder keeps one)") from None
        except (ValueError, OSError) as exc:
            raise ModelStoreError(f"validation record of {ref!r} in {self.root} is unreadable: {exc}") from None

    def refs(self) -> list[str]:
        """Every stored reference, oldest version first within a name."""
        out = []
        if self.root.is_dir():
            for name_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                versions = sorted(
                    (int(v.name[1:]) for v in name_dir.iterdir() if re.fullmatch(r"v[0-9]+", v.name)),
                )
                out.extend(f"{name_dir.name}:v{v}" for v in versions)
        return out
