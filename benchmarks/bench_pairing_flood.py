"""Pairing-store flood: rows in ``pairing.db`` while 10,000 accounts abuse ``/link``.

Each account asks for codes until refused (3 each) and sends wrong codes
until locked out (5 count, a 6th is refused), at one account per 0.36 s of
simulated time (10,000 accounts in an hour). The script prints the rows of
the ``codes`` and ``failures`` tables at the peak, at the end of the flood,
and after two quiet hours: after 100 ordinary writes, and once empty (at most
1,000 writes). It runs against whatever ``onethread`` is importable, so the
same script measures an older release:

    python benchmarks/bench_pairing_flood.py [--accounts 10000] [--path :memory:]
    PYTHONPATH=/path/to/onethread-0.1/src python benchmarks/bench_pairing_flood.py

Time is simulated (a clock the script moves), so the run takes seconds, not
hours. ``--path`` may name a file; ``:memory:`` (the default) gives the same
row counts, faster.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from typing import Any

from onethread.session import pairing


def flood(accounts: int, path: str) -> dict[str, Any]:
    """Run the flood; return the row counts seen."""
    now = [1_800_000_000.0]

    def clock() -> float:
        return now[0]

    params = inspect.signature(pairing.PairingStore).parameters
    if "clock" in params:
        store = pairing.PairingStore(path, clock=clock)
    else:  # a release without the clock parameter reads time.time() at each call
        time.time = clock
        store = pairing.PairingStore(path)

    def rows() -> tuple[int, int]:
        conn = store._conn
        return (
            int(conn.execute("SELECT count(*) FROM codes").fetchone()[0]),
            int(conn.execute("SELECT count(*) FROM failures").fetchone()[0]),
        )

    peak = (0, 0)
    issued = refused = 0
    wrong = "AAAA-AAAA-AAA2" if pairing.CODE_LENGTH == 12 else "AAAAAAA2"
    for i in range(accounts):
        now[0] += 3600.0 / accounts
        for _ in range(pairing.MAX_LIVE_CODES + 1):
            if store.issue("link", "telegram", f"attacker-{i}") is None:
                refused += 1
            else:
                issued += 1
        for _ in range(pairing.MAX_FAILURES_PER_HOUR + 1):
            store.redeem("link", wrong, by_platform="discord", by_user_id=f"a{i}")
        if i % 100 == 0:
            r = rows()
            peak = (max(peak[0], r[0]), max(peak[1], r[1]))
    end = rows()
    peak = (max(peak[0], end[0]), max(peak[1], end[1]))
    now[0] += 2 * 3600.0
    after_100 = after = (0, 0)
    writes = 0
    while writes < 1000:  # ordinary writes (an owner approving someone) until drained
        store.approve("telegram", f"owner-{writes % 3}")
        writes += 1
        after = rows()
        if writes == 100:
            after_100 = after
        if after == (0, 0) and writes >= 100:
            break
    store.close()
    return {
        "code_length": pairing.CODE_LENGTH,
        "accounts": accounts,
        "codes_issued": issued,
        "codes_refused": refused,
        "peak_rows": {"codes": peak[0], "failures": peak[1]},
        "end_of_flood_rows": {"codes": end[0], "failures": end[1]},
        "two_quiet_hours_later_rows_after_100_writes": {
            "codes": after_100[0],
            "failures": after_100[1],
        },
        f"rows_after_{writes}_writes": {"codes": after[0], "failures": after[1]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--path", default=":memory:")
    args = parser.parse_args()
    started = time.perf_counter()
    result = flood(args.accounts, args.path)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
