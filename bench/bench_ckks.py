"""CKKS aggregation benchmark: encrypted FedAvg sum of 3 clients' updates vs numpy, in one run.

For each update size (10k, 100k, 1M parameters; ``--quick`` skips 1M) and the aggregation key
(N=8192, chain [60,60], scale 2^40):

* ``encrypt``  — one client: encrypt + serialize its update (mean over the 3 clients);
* ``sum``      — coordinator: deserialize 3 envelopes under the public context, add, serialize;
* ``decrypt``  — a client: deserialize the sum under the secret key and decrypt;
* ``total``    — the three above for one round (3 encryptions).

``ratio`` is each time over numpy summing the same 3 plaintext float64 vectors, measured in the
same run; ``mb_wire`` is what one client uploads (encrypt) or downloads (sum/decrypt);
``max_error`` compares the decrypted sum with the numpy sum.

Run: ``python -m bench.bench_ckks [--quick] [--json]``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from bench._report import bench_parser, report
from crypto.ckks_keys import AGGREGATION, AggregationKey, EncryptedVector, PublicContext, decrypt, encrypt_vector

SIZES = (10_000, 100_000, 1_000_000)
CLIENTS = 3


def _best_ms(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def _params_label() -> str:
    chain = ",".join(str(b) for b in AGGREGATION.coeff_mod_bit_sizes)
    return f"N={AGGREGATION.poly_modulus_degree} [{chain}] 2^{AGGREGATION.scale_bits}"


def run(quick: bool) -> list[dict]:
    """One row per (size, operation)."""
    key = AggregationKey.generate()
    public = PublicContext.from_bytes(key.public_context_bytes())
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    sizes = SIZES[:2] if quick else SIZES
    for n in sizes:
        updates = [rng.normal(scale=0.05, size=n) for _ in range(CLIENTS)]
        expected = updates[0] + updates[1] + updates[2]
        numpy_ms = _best_ms(lambda: updates[0] + updates[1] + updates[2], repeat=20)

        t0 = time.perf_counter()
        uploads = [encrypt_vector(public, u).to_bytes() for u in updates]
        encrypt_ms = (time.perf_counter() - t0) * 1e3 / CLIENTS

        t0 = time.perf_counter()
        envs = [EncryptedVector.from_bytes(b, public) for b in uploads]
        total = envs[0]
        for e in envs[1:]:
            total.add_(e)
        download = total.to_bytes()
        sum_ms = (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        plain = decrypt(key, EncryptedVector.from_bytes(download, key))
        decrypt_ms = (time.perf_counter() - t0) * 1e3
        err = float(np.max(np.abs(plain - expected)))

        base = {"bench": "ckks", "params": _params_label(), "size": n, "clients": CLIENTS, "numpy_ms": numpy_ms}
        up_mb = len(uploads[0]) / 1e6
        down_mb = len(download) / 1e6
        for op, ms, mb, e in (
            ("encrypt", encrypt_ms, up_mb, None),
            ("sum", sum_ms, down_mb, None),
            ("decrypt", decrypt_ms, down_mb, err),
            ("total", encrypt_ms * CLIENTS + sum_ms + decrypt_ms, up_mb * CLIENTS + down_mb, err),
        ):
            rows.append(
                {
                    **base,
                    "op": op,
                    "ms": round(ms, 3),
                    "ratio": round(ms / numpy_ms, 1) if numpy_ms > 0 else None,
                    "mb_wire": round(mb, 3),
                    "bytes_per_param": round(mb * 1e6 / n, 1),
                    "max_error": e,
                }
            )
    return rows


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"CKKS aggregation ({rows[0]['params'] if rows else ''}, {CLIENTS} clients) vs numpy sum")
    for col in ("size", "op", "ms", "numpy ms", "ratio", "MB wire", "B/param", "max error"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['size']:,}",
            r["op"],
            f"{r['ms']:.1f}",
            f"{r['numpy_ms']:.3f}",
            f"{r['ratio']:,.0f}x" if r["ratio"] is not None else "-",
            f"{r['mb_wire']:.2f}",
            f"{r['bytes_per_param']:.1f}",
            f"{r['max_error']:.1e}" if r["max_error"] is not None else "",
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench_ckks", __doc__, "skip the 1M-parameter size")
    args = parser.parse_args(argv)
    return report(run(quick=args.quick), args.json, _print_table)


if __name__ == "__main__":
    raise SystemExit(main())
