"""The stages of ``fedscore demo``, in order. Each runs real ``fedscore`` commands as processes."""

from __future__ import annotations

from coordinator.demo import DemoContext, Stage


def synth(ctx: DemoContext) -> str:
    data = ctx.out / "data"
    summary = ctx.fedscore("synth", "synth", "--out", str(data), "--enterprises", str(ctx.enterprises),
                           "--seed", str(ctx.seed), "--json", parse_json=True)
    ctx.results["synth"] = summary
    ctx.results["config"] = str(data / "consortium.toml")
    return f"{ctx.enterprises} SMEs, holders: {', '.join(sorted(summary.get('participants', {})))}"


def baseline(ctx: DemoContext) -> str:
    rows = ctx.fedscore("baseline", "baseline", "--dataset", "synth", "--config", ctx.results["config"],
                        "--seed", str(ctx.seed), "--json", parse_json=True)
    ctx.results["baseline"] = rows
    return f"{len(rows)} centralised yardsticks"


def train_vertical(ctx: DemoContext) -> str:
    summary = ctx.fedscore("train_vertical", "train", "vertical", "--config", ctx.results["config"],
                           "--state-dir", str(ctx.out / "coordinator"), "--seed", str(ctx.seed), "--json",
                           parse_json=True)
    ctx.results["vertical"] = summary
    return "see log"


STAGES: tuple[Stage, ...] = (
    Stage("synth", "Generate a synthetic consortium (bank, tax, platform, utility)", synth),
    Stage("baseline", "Centralised yardsticks (pooled vs single source)", baseline),
    Stage("train_vertical", "PSI + vertical split training on Flower (simulation)", train_vertical),
)
