"""One onethread host for test_multihost_platforms: BotOS on ONE platform, shared store.

    python _host_worker.py PLATFORM STORE_URL

Platform credentials, endpoints and the model come from the environment.
Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import sys

from onethread import Agent
from onethread.bots import BotOS
from onethread.session.urls import open_identity_resolver

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    platform, url = sys.argv[1], sys.argv[2]
    BotOS(
        Agent(name="assistant"),
        platforms=[platform],
        identity_resolver=open_identity_resolver(url),
        store=url,
    ).run()
