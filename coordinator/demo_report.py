"""The demo's report: one HTML page and PNG plots a credit committee can read.

Figures come from what each party may see: training metrics the label holder reported, centralised
yardsticks, and the lender's own decrypted scores compared with the outcomes the bank (the lender
here) later observed for its borrowers.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from coordinator.demo import DemoContext  # noqa: E402
from models.metrics import evaluate, ks_curve, roc_points  # noqa: E402

GRADES = ("A", "B", "C", "D", "E")


def _month_index(month: str) -> int:
    year, mon = month.split("-")
    return int(year) * 12 + int(mon) - 1


def observed_outcomes(outcomes_csv: Path, as_of: str, horizon: int = 12) -> dict[str, int]:
    """The bank's view a year later: 1 if the borrower defaulted within ``horizon`` months after as-of.

    Borrowers already in default at as-of are not scored and so are left out.
    """
    t = _month_index(as_of)
    out: dict[str, int] = {}
    with outcomes_csv.open() as fh:
        for row in csv.DictReader(fh):
            month = row["default_month"]
            if month and _month_index(month) <= t:
                continue
            out[row["uscc"]] = int(bool(month) and _month_index(month) <= t + horizon)
    return out


def _mask(uscc: str) -> str:
    return uscc[:4] + "*" * 10 + uscc[-4:]


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plots(folder: Path, y: np.ndarray, pd_: np.ndarray, grades: list[str]) -> dict[str, str]:
    files: dict[str, str] = {}
    roc = roc_points(y, pd_)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(roc.fpr, roc.tpr, label=f"federated, AUC {roc.auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (lender's portfolio)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(folder / "roc.png", dpi=110)
    plt.close(fig)
    files["roc"] = "roc.png"

    ks = ks_curve(y, pd_)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(ks.thresholds, ks.bad_rate, label="defaulters (cumulative)")
    ax.plot(ks.thresholds, ks.good_rate, label="non-defaulters (cumulative)")
    ax.axvline(ks.ks_threshold, c="grey", ls=":", lw=0.8)
    ax.set(xlabel="PD threshold", ylabel="share at or above threshold", title=f"KS = {ks.ks:.3f}")
    ax.invert_xaxis()
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "ks.png", dpi=110)
    plt.close(fig)
    files["ks"] = "ks.png"

    counts = [sum(g == grade for g in grades) for grade in GRADES]
    rates = [float(np.mean(y[[g == grade for g in grades]])) if c else 0.0 for grade, c in zip(GRADES, counts)]
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.bar(GRADES, counts, color="#4a7bb7")
    ax.set(xlabel="grade", ylabel="SMEs", title="Score distribution by grade")
    ax2 = ax.twinx()
    ax2.plot(GRADES, [r * 100 for r in rates], "o-", c="#c0392b")
    ax2.set_ylabel("observed default rate, %")
    fig.tight_layout()
    fig.savefig(folder / "grades.png", dpi=110)
    plt.close(fig)
    files["grades"] = "grades.png"
    return files


def write_report(ctx: DemoContext) -> Path:
    folder = ctx.out / "report"
    folder.mkdir(exist_ok=True)
    res = ctx.results
    as_of = res["synth"]["as_of"]
    outcomes = observed_outcomes(ctx.out / "data" / "bank" / "outcomes.csv", as_of)
    scored = [r for r in res["portfolio"] if r["scored"] and r["uscc"] in outcomes]
    y = np.array([outcomes[r["uscc"]] for r in scored])
    pd_ = np.array([r["pd"] for r in scored])
    grades = [r["grade"] for r in scored]
    plots = _plots(folder, y, pd_, grades) if 0 < y.sum() < y.size else {}
    portfolio_metrics = evaluate(y, pd_) if plots else None

    vertical = res["vertical"]
    auc_rows = [[r["features"], r["model"], f"{r['auc']:.3f}", f"{r['ks']:.3f}", f"{r['gini']:.3f}"]
                for r in res.get("baseline", [])]
    for scope, m in vertical["metrics"].items():
        if m:
            auc_rows.append([f"federated split model ({scope.replace('_', ' ')})", vertical.get("top_kind", ""),
                             f"{m['auc']:.3f}", f"{m['ks']:.3f}", f"{m['gini']:.3f}"])
    if portfolio_metrics is not None:
        auc_rows.append(["federated, lender's portfolio (encrypted scores vs outcomes)", "", f"{portfolio_metrics.auc:.3f}",
                         f"{portfolio_metrics.ks:.3f}", f"{portfolio_metrics.gini:.3f}"])

    card = res["single"][0]
    card_rows = [["enterprise", _mask(card["uscc"])], ["probability of default", f"{card['pd']:.4f}"],
                 ["score (300–900)", card["score"]], ["grade", card["grade"]],
                 ["sources contributing", ", ".join(card["sources"])],
                 ["sources missing", ", ".join(f"{k}: {v}" for k, v in card["missing"].items()) or "none"],
                 ["model", card.get("model_ref", "")]]
    timing_rows = [[t, f"{s:.1f}", r] for t, s, r in ctx.timings]
    stages = vertical.get("stages", {})
    flower_rows = [[k, v.get("rounds"), f"{v.get('seconds', 0):.1f}"] for k, v in stages.items()]
    revoked = res.get("revoked", "")
    images = "".join(f'<img src="{f}" alt="{k}">' for k, f in plots.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>fedscore demo report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:0.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
th{{background:#f3f3f3}}img{{margin:4px;border:1px solid #eee}}</style></head><body>
<h1>fedscore — consortium demo report</h1>
<p>{res['synth']['enterprises']} synthetic SMEs seen by a bank, the tax authority, an e-commerce platform and a
utility, as of {html.escape(as_of)}. The model was trained across all four without any of them exporting rows;
scores below were decrypted only by the lender ({html.escape(str(len(scored)))} borrowers with observed outcomes).</p>
<h2>Discrimination</h2>{images or '<p>(not enough observed defaults in the portfolio to plot)</p>'}
<h2>Federated vs single-source models</h2>
{_table(['features', 'model', 'AUC', 'KS', 'Gini'], auc_rows)}
<p>Centralised rows pool data that no party could pool in practice: they are the yardstick. Held-out rows of the
federated model come from the label holder's validation split (coverage: enterprises known to every holder vs
missing at some holder).</p>
<h2>Sample score card</h2>{_table(['', ''], card_rows)}
<h2>Consent</h2><p>After the enterprise revoked its grant, the next request was refused:
{html.escape(revoked)}.</p>
<h2>Training rounds</h2>{_table(['stage', 'Flower rounds', 'seconds'], flower_rows)}
<h2>Stage timings</h2>{_table(['stage', 'seconds', 'result'], timing_rows)}
</body></html>"""
    index = folder / "index.html"
    index.write_text(page)
    return index
