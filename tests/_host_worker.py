"""One onethread host for test_multihost_platforms: BotOS on ONE platform, shared store.

    python _host_worker.py PLATFORM STORE_URL [PREFIX]

PREFIX (Redis only) namespaces every key the host writes, so concurrent test
runs on one Redis database never touch each other's data.

Platform credentials, endpoints and the model come from the environment.
Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import sys

from onethread import Agent
from onethread.bots import BotOS
from onethread.session.urls import open_coordination, open_history_store, open_identity_resolver

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    platform, url = sys.argv[1], sys.argv[2]
    options = {"prefix": sys.argv[3]} if len(sys.argv) > 3 else {}
    BotOS(
        Agent(name="assistant"),
        platforms=[platform],
        identity_resolver=open_identity_resolver(url, **options),
        store=open_history_store(url, **options),
        coordination=open_coordination(url, **options),
    ).run()
