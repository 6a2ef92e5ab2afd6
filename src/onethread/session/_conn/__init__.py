"""Connection helpers shared by every store: one place per server kind.

``redis`` (client set-up, Lua scripts, layout checks), ``postgres`` (pools,
schema checks, migrations), ``sqlite`` (busy retries) and ``shared`` (per-loop
clients, URL redaction, masking of ids in logs). The stores themselves live in
one folder per concern: ``history/``, ``identity/``, ``locks/``, ``outbox/``.
"""
