"""``fedscore monitor add|remove|list|run|report|stability``: the lender's portfolio monitor.

``add/remove/list/run`` work on the lender's own state folder (``--state-dir``), where the
watchlist and the decrypted score history live. ``stability`` runs at a data holder over its own
data and prints only indices. ``report`` is the early-warning evaluation on a synthetic consortium.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from participants.monitoring.alerts import (
    AlertConfig,
    AlertRules,
    ConsoleSink,
    ExplanationPolicy,
    JsonlSink,
    WebhookConfig,
    WebhookSink,
    load_alert_config,
)
from participants.monitoring.errors import MonitoringError
from participants.monitoring.watchlist import MONITORING_DIR, Watchlist, check_month
from protocols.consortium import validate_settings
from protocols.errors import ConfigError

app = typer.Typer(no_args_is_help=True)
monitor_app = typer.Typer(help="Watch a portfolio: monthly encrypted re-scoring, alerts, stability.",
                          no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")

_STATE = typer.Option(Path("lender-state"), "--state-dir", help="The lender's state folder (watchlist, history).")
_LENDER = typer.Option("lender", "--lender", help="This lender's name, as grants name it.")


def _console(as_json: bool = False) -> Console:
    return Console(highlight=False, stderr=as_json)


@monitor_app.command("add")
def add(
    grant: list[Path] = typer.Option(..., "--grant", help="Monitoring grant file(s): one grant, a JSON array or JSON lines."),
    state_dir: Path = _STATE,
    lender: str = _LENDER,
    authority_key: Optional[Path] = typer.Option(None, "--authority-key", help="Authority public key: verify signatures."),
    note: str = typer.Option("", "--note", help="Free text kept with the entries."),
) -> None:
    """Watch the enterprises named by monitoring grants (refused without a valid one)."""
    from crypto.identity import IdentityPublicKey
    from participants.lender import load_grants

    key = IdentityPublicKey.load(authority_key) if authority_key else None
    watchlist = Watchlist(state_dir, lender)
    grants = load_grants(grant)
    if not grants:
        raise ConfigError("no grant in the --grant file(s)")
    for uscc, text in grants.items():
        watchlist.add(uscc, text, authority_key=key, note=note)
    _console().print(f"watching {len(grants)} enterprise(s); {len(watchlist)} on the watchlist")


@monitor_app.command("remove")
def remove(
    usccs: list[str] = typer.Argument(..., help="Enterprises to stop watching."),
    state_dir: Path = _STATE,
    lender: str = _LENDER,
    purge: bool = typer.Option(False, "--purge", help="Also delete their score history."),
) -> None:
    """Stop watching enterprises."""
    watchlist = Watchlist(state_dir, lender, create=False)
    removed = sum(watchlist.remove(u, purge_history=purge) for u in usccs)
    _console().print(f"removed {removed} of {len(usccs)}; {len(watchlist)} on the watchlist")


@monitor_app.command("list")
def list_(
    state_dir: Path = _STATE,
    lender: str = _LENDER,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per entry."),
) -> None:
    """The watchlist with each enterprise's latest score."""
    watchlist = Watchlist(state_dir, lender, create=False)
    months = watchlist.months()
    latest = watchlist.scores(months[-1]) if months else {}
    entries = watchlist.entries()
    if as_json:
        for e in entries:
            r = latest.get(e.uscc)
            print(json.dumps({"uscc": e.uscc, "grant_id": e.grant_id, "valid_until": e.valid_until.isoformat(),
                              "as_of": r.as_of if r else None, "pd": r.pd if r else None,
                              "grade": r.grade if r else None}))
        return
    table = Table("uscc", "grant valid until", "as of", "PD", "grade", "note",
                  title=f"watchlist: {len(entries)} enterprise(s)")
    for e in entries:
        r = latest.get(e.uscc)
        table.add_row(e.uscc, e.valid_until.date().isoformat(), r.as_of if r else "-",
                      f"{r.pd:.2%}" if r and r.pd is not None else "-", (r.grade or "-") if r else "-", e.note)
    _console().print(table)


def _rules(config: AlertConfig, pd_above: float | None, pd_jump: float | None, downgrade: int | None,
           source_shift: float | None, explanations: bool | None) -> AlertRules:
    """CLI flags override the TOML; the result is validated as a whole, and a bad flag is named."""
    data = config.rules.model_dump()
    flags = {}
    for key, option, value in (("pd_above", "--pd-above", pd_above), ("pd_jump_points", "--pd-jump", pd_jump),
                               ("grade_downgrade", "--downgrade", downgrade),
                               ("source_shift", "--source-shift", source_shift)):
        if value is not None:
            data[key] = value
            flags[key] = option
    if explanations is not None:
        data["explanations"] = ExplanationPolicy(per_source_contributions=explanations).model_dump()
    try:
        return AlertRules.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        option = flags.get(str(first["loc"][0])) if first["loc"] else None
        if option is None:  # the rules as a whole: a flag against the TOML's explanation policy
            raise ConfigError(f"alert rules: {first['msg'].removeprefix('Value error, ')}") from None
        raise ConfigError(f"{option}: {first['msg']} (got {first['input']!r})") from None


@monitor_app.command("run")
def run(
    as_of: str = typer.Option(..., "--as-of", help="Month being monitored, YYYY-MM: every holder scores with "
                                                   "its features as of this month."),
    state_dir: Path = _STATE,
    lender: str = _LENDER,
    key: Path = typer.Option(Path("lender.ckks"), "--key", help="Lender CKKS secret key file."),
    gateway: str = typer.Option("127.0.0.1:50051", "--gateway", envvar="FEDSCORE_GATEWAY", help="Gateway host:port."),
    pki: Path = typer.Option(Path("pki"), "--pki", help="Folder written by `fedscore certs`."),
    model: str = typer.Option("", "--model", help="Model reference name:vN (default: the gateway's)."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Enterprises per request (default: slots)."),
    rules_file: Optional[Path] = typer.Option(None, "--rules", help="Alert TOML ([rules], jsonl, [webhook])."),
    pd_above: Optional[float] = typer.Option(None, "--pd-above", help="Alert when PD exceeds this (0-1)."),
    pd_jump: Optional[float] = typer.Option(None, "--pd-jump", help="Alert on a rise of this many PD points."),
    downgrade: Optional[int] = typer.Option(None, "--downgrade", help="Alert on a fall of this many grades."),
    source_shift: Optional[float] = typer.Option(None, "--source-shift", help="Alert when a source moves the logit this much."),
    explanations: Optional[bool] = typer.Option(None, "--explanations/--no-explanations",
                                                help="The consortium allows per-source contributions."),
    webhook: Optional[str] = typer.Option(None, "--webhook", help="POST alerts to this URL as well."),
    timeout: float = typer.Option(60.0, "--timeout", min=0.1, help="Seconds per scoring request."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """Re-score the whole watchlist (encrypted, decrypted here only), store it, raise alerts."""
    from crypto.ckks_keys import LenderKeyPair
    from participants.lender import LenderClient
    from participants.monitoring.monitor import run_month
    from participants.monitoring.scorers import SdkScorer
    from protocols.scoring import MutualTls

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # the arguments first, then the lender's own state, then keys, certificates and the network
    try:
        check_month(as_of)
    except MonitoringError as exc:
        raise ConfigError(f"--as-of: {exc}") from None
    config = load_alert_config(rules_file) if rules_file else AlertConfig()
    rules = _rules(config, pd_above, pd_jump, downgrade, source_shift, explanations)
    hook = validate_settings(WebhookConfig, {"url": webhook}, "--webhook") if webhook else config.webhook
    watchlist = Watchlist(state_dir, lender, create=False)
    durable = JsonlSink(config.jsonl or state_dir / MONITORING_DIR / "alerts.jsonl")
    sinks = [ConsoleSink(_console(as_json))] + ([WebhookSink(hook)] if hook else [])
    client = LenderClient.connect(gateway, MutualTls.from_pki(pki, lender), LenderKeyPair.load(key),
                                  model_ref=model, timeout=timeout)
    summary = run_month(watchlist, SdkScorer(client, batch=batch), as_of, rules, durable, sinks)
    if as_json:
        print(summary.model_dump_json())
        return
    line = (f"{summary.as_of}: scored {summary.scored}/{summary.watched - summary.expired} "
            f"({summary.expired} expired grant(s) skipped), {summary.alerts} alert(s) -> {durable.path}")
    if summary.failed_sinks:
        line += f"; [yellow]failed sinks: {', '.join(summary.failed_sinks)} (alerts kept in the file)[/]"
    if summary.stability is not None:
        s = summary.stability
        line += f"; score PSI vs {s.reference} {s.worst_psi:.3f} ({s.status.value})"
    _console().print(line)


@monitor_app.command("stability")
def stability(
    consortium: Path = typer.Option(..., "--consortium", help="Consortium TOML."),
    participant: str = typer.Option(..., "--participant", help="This holder's name."),
    reference: str = typer.Option(..., "--reference", help="Month the model was trained on, YYYY-MM."),
    as_of: str = typer.Option(..., "--as-of", help="Current month, YYYY-MM."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """At a data holder: PSI of each of its features, reference vs current (only indices printed)."""
    from participants.datastore import LocalDataStore
    from participants.monitoring.stability import holder_feature_stability
    from protocols.consortium import load_consortium

    cfg = load_consortium(consortium)
    part = next((p for p in cfg.data_holders if p.name == participant), None)
    if part is None:
        raise ConfigError(f"{consortium}: no data-holding participant named {participant!r}")
    report = holder_feature_stability(LocalDataStore(part), reference, as_of)
    if as_json:
        print(report.model_dump_json())
        return
    table = Table("feature", "PSI", "status", title=f"{participant}: feature stability {reference} -> {as_of}")
    from participants.monitoring.stability import classify

    for name, value in sorted(report.psi.items(), key=lambda kv: -kv[1]):
        table.add_row(name, f"{value:.3f}", classify(value).value)
    _console().print(table)


@monitor_app.command("report")
def report(
    synth: Path = typer.Option(..., "--synth", help="Synthetic consortium folder (generated if empty)."),
    months: int = typer.Option(12, "--months", help="Monitoring months (the last ones written)."),
    enterprises: int = typer.Option(10_000, "--enterprises", help="Firms, when generating."),
    seed: int = typer.Option(11, "--seed", help="Seed, when generating."),
    rate: float = typer.Option(0.10, "--rate", help="Share of the watchlist flagged each month."),
    lead: int = typer.Option(3, "--lead", help="Months ahead a flag must come to count."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Early-warning evaluation: federated vs bank-only, at a fixed monthly alert rate."""
    from participants.monitoring.evaluate import render, run_evaluation

    err = Console(stderr=True, highlight=False)
    with err.status("starting") as status:
        result = run_evaluation(synth, months=months, enterprises=enterprises, seed=seed, rate=rate, lead=lead,
                                progress=lambda m: status.update(m))
    if as_json:
        print(result.model_dump_json(indent=1))
    else:
        render(result)
