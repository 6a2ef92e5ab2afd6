"""Log lines meant for operators: the per-turn line and the JSON formatter.

One INFO line per turn on the ``onethread.turns`` logger::

    turn platform=telegram account=telegram:#1a2b3c4d in=12 out=240 model_ms=812 \
        total_ms=840 outcome=ok

The account is always a short hash (:func:`onethread.session._conn.shared.who`
with ``always=True``: the same account gives the same hash, so lines can be
matched up, but no platform id leaves the host); no message text is ever
logged, only its length. The same fields ride on the record as ``turn``, so
:class:`JsonFormatter` (``onethread --log-format json``) writes them as JSON
keys for log shippers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from .session._conn.shared import who

__all__ = ["TURN_FIELDS", "TURN_LOGGER", "JsonFormatter", "log_turn"]

TURN_LOGGER = "onethread.turns"
TURN_FIELDS = ("platform", "account", "chars_in", "chars_out", "model_ms", "total_ms", "outcome")

_turn_log = logging.getLogger(TURN_LOGGER)


def log_turn(
    platform: str,
    user_id: str,
    chars_in: int,
    chars_out: int,
    model_seconds: float,
    total_seconds: float,
    outcome: str,
) -> None:
    """Write the per-turn INFO line (nothing is built when INFO is off for the logger)."""
    if not _turn_log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "platform": platform,
        "account": who(platform, user_id, always=True),
        "chars_in": chars_in,
        "chars_out": chars_out,
        "model_ms": round(model_seconds * 1000.0),
        "total_ms": round(total_seconds * 1000.0),
        "outcome": outcome,
    }
    _turn_log.info(
        "turn platform=%s account=%s in=%d out=%d model_ms=%d total_ms=%d outcome=%s",
        *fields.values(),
        extra={"turn": fields},
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, and for
    the per-turn line its fields (:data:`TURN_FIELDS`) as keys of their own.

    An exception's traceback goes in ``exc`` (one string), so every record stays
    one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        turn = getattr(record, "turn", None)
        if isinstance(turn, dict):
            out.update(turn)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)
