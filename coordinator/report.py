"""Training report: a PNG (training curve, ROC, KS) and a self-contained HTML page per run.

Built only from what reached the coordinator -- per-participant metrics and 51-point summary curves;
no scores, rows or weights. Matplotlib runs headless (Agg).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["write_report", "render_figure"]


def _get(summary: Any, name: str) -> Any:
    return summary[name] if isinstance(summary, dict) else getattr(summary, name)


def _rounds(summary: Any) -> list[dict[str, Any]]:
    return [r if isinstance(r, dict) else r.model_dump() for r in _get(summary, "rounds")]


def _curve_source(final: dict[str, dict[str, Any]]) -> str:
    """Prefer the shared test set when participants evaluated on one, else validation."""
    return "test" if any("test-roc-tpr" in m for m in final.values()) else "val"


def render_figure(summary: Any) -> bytes:
    """PNG bytes: training curve (AUC/KS/Gini per round), ROC per participant, KS curve."""
    rounds = _rounds(summary)
    final: dict[str, dict[str, Any]] = _get(summary, "final")
    final_agg: dict[str, float] = _get(summary, "final_aggregated")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))

    ax = axes[0]
    xs = [r["round"] - 1 for r in rounds] + [len(rounds)]
    for key, label in (("val-auc", "AUC"), ("val-ks", "KS"), ("val-gini", "Gini")):
        ys = [r["aggregated"].get(key, float("nan")) for r in rounds] + [final_agg.get(key, float("nan"))]
        ax.plot(xs, ys, marker="o", label=f"{label} (weighted mean)")
    for name in sorted(final):
        ys = [r["metrics"].get(name, {}).get("val-auc", float("nan")) for r in rounds]
        ys.append(final[name].get("val-auc", float("nan")))
        ax.plot(xs, ys, linestyle=":", alpha=0.6, label=f"AUC {name}")
    ax.set_xlabel("completed rounds")
    ax.set_ylabel("validation metric")
    ax.set_title("Training curve (participants' validation splits)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)

    src = _curve_source(final)
    ax = axes[1]
    for name in sorted(final):
        m = final[name]
        if f"{src}-roc-fpr" in m:
            ax.plot(m[f"{src}-roc-fpr"], m[f"{src}-roc-tpr"], label=f"{name} (AUC {m.get(f'{src}-auc', 0):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC of the final model ({src})")
    ax.legend(fontsize=7)

    ax = axes[2]
    for name in sorted(final)[:1] if src == "test" else sorted(final):
        m = final[name]
        if f"{src}-ks-bad" in m:
            pop = m[f"{src}-ks-population"]
            ax.plot(pop, m[f"{src}-ks-bad"], label=f"bad ({name})")
            ax.plot(pop, m[f"{src}-ks-good"], linestyle="--", label=f"good ({name})")
    ax.set_xlabel("share of population, riskiest first")
    ax.set_ylabel("cumulative share")
    ax.set_title(f"KS of the final model ({src})")
    ax.legend(fontsize=7)

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(summary: Any, out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``report.png`` and ``report.html`` (PNG embedded) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = render_figure(summary)
    png_path, html_path = out / "report.png", out / "report.html"
    png_path.write_bytes(png)

    rounds = _rounds(summary)
    final: dict[str, dict[str, Any]] = _get(summary, "final")
    round_rows = [
        [str(r["round"]), ", ".join(r["contributors"]), ", ".join(r["dropped"]) or "-",
         f"{r['aggregated'].get('val-auc', float('nan')):.4f}", f"{r['aggregated'].get('val-ks', float('nan')):.4f}",
         f"{r['seconds']:.1f}"]
        for r in rounds
    ]
    final_rows = []
    for name in sorted(final):
        m = final[name]
        final_rows.append([name] + [f"{m[k]:.4f}" if k in m else "-" for k in
                                    ("val-auc", "val-ks", "val-gini", "test-auc", "test-ks", "test-gini")])
    privacy = _get(summary, "privacy")
    if privacy is not None:
        p = privacy if isinstance(privacy, dict) else privacy.model_dump()
        privacy_text = (f"(ε = {p['epsilon']:.3f}, δ = {p['delta']:g}) after {p['rounds']} round(s); "
                        f"noise multiplier {p['noise_multiplier']}, clip {p['clip_norm']} ({p['mechanism']})")
    else:
        privacy_text = "no differential-privacy noise added"
    cfg = _get(summary, "config")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fedscore training report {html.escape(str(_get(summary, 'version')))}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}</style></head>
<body>
<h1>Horizontal training report</h1>
<p>Model version <b>{html.escape(str(_get(summary, 'version')))}</b>, run {_get(summary, 'run_id')},
{html.escape(str(cfg.get('model')))} / {html.escape(str(cfg.get('strategy')))}, {len(rounds)} round(s),
encrypted aggregation: <b>{html.escape(str(cfg.get('encrypted')))}</b>
(key holder {html.escape(str(_get(summary, 'key_holder')))}; coordinator decrypt attempt:
{html.escape(str(_get(summary, 'coordinator_decrypt_check')))}).</p>
<p>Privacy: {html.escape(privacy_text)}</p>
<img alt="training curve, ROC and KS" src="data:image/png;base64,{base64.b64encode(png).decode()}" style="max-width:100%">
<h2>Rounds</h2>
<p>Metrics of the model each round started from, on each participant's own validation split.</p>
{_table(round_rows, ["round", "contributors", "dropped", "val AUC", "val KS", "seconds"])}
<h2>Final model</h2>
{_table(final_rows, ["participant", "val AUC", "val KS", "val Gini", "test AUC", "test KS", "test Gini"])}
</body></html>
"""
    html_path.write_text(page, encoding="utf-8")
    return png_path, html_path
