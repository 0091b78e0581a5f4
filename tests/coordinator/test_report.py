"""The training report renders from a run summary: PNG + self-contained HTML."""

from __future__ import annotations

import numpy as np

from coordinator.report import write_report


def _summary():
    grid = np.linspace(0, 1, 51).tolist()
    curve = {"val-roc-fpr": grid, "val-roc-tpr": np.sqrt(grid).tolist(), "val-ks-population": grid,
             "val-ks-bad": np.sqrt(grid).tolist(), "val-ks-good": grid}
    final = {n: {"val-auc": 0.7 + i / 100, "val-ks": 0.3, "val-gini": 0.4, "num-val": 100, **curve}
             for i, n in enumerate(["bank_a", "bank_b"])}
    rounds = [{"round": r, "contributors": ["bank_a", "bank_b"], "dropped": [] if r == 1 else ["bank_b"],
               "metrics": {"bank_a": {"val-auc": 0.5 + r / 10}}, "aggregated": {"val-auc": 0.5 + r / 10, "val-ks": 0.2},
               "seconds": 1.5} for r in (1, 2)]
    return {"run_id": 9, "version": "credit:v3", "config": {"model": "mlp", "strategy": "fedprox", "encrypted": True},
            "key_holder": "bank_a", "coordinator_decrypt_check": "MissingSecretKey", "rounds": rounds,
            "final": final, "final_aggregated": {"val-auc": 0.705, "val-ks": 0.3, "val-gini": 0.41},
            "privacy": {"epsilon": 3.2, "delta": 1e-5, "rounds": 2, "noise_multiplier": 1.0, "clip_norm": 1.0,
                        "mechanism": "gaussian"}}


def test_report_files(tmp_path):
    png, html = write_report(_summary(), tmp_path / "out")
    assert png.read_bytes().startswith(b"\x89PNG")
    page = html.read_text()
    assert "credit:v3" in page and "data:image/png;base64," in page
    assert "MissingSecretKey" in page and "ε = 3.200" in page
    assert page.count("<tr>") >= 2 + 2  # both rounds and both participants are tabulated
    assert "bank_b" in page
