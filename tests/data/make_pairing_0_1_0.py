"""How ``pairing-0.1.0.db`` was made: run with onethread 0.1.0 (main at 3aa6b44) on the path.

    PYTHONPATH=/path/to/onethread-0.1.0/src python tests/data/make_pairing_0_1_0.py OUT.db

It prints the plaintext codes it issued; ``tests/test_pairing_store.py`` keeps
them (they are test data, not secrets). Running it with a later onethread
makes a file of that release instead, which is not what the test needs.
"""

from __future__ import annotations

import json
import sys

from onethread.session.pairing import PairingStore

CENTURY = 100 * 365 * 86400.0

store = PairingStore(sys.argv[1])
live_link = store.issue(
    "link", "telegram", "t-legacy", chat_id="t-legacy-chat", user_name="Legacy Lee", ttl=CENTURY
)
expired_link = store.issue(
    "link", "telegram", "t-old", chat_id="t-old-chat", user_name="Old", ttl=-1.0
)
used_link = store.issue(
    "link", "discord", "d-used", chat_id="d-used-chat", user_name="Used", ttl=CENTURY
)
assert used_link is not None
assert store.redeem("link", used_link, by_platform="slack", by_user_id="s-used").code is not None
live_approval = store.issue(
    "approve", "telegram", "stranger", chat_id="stranger-chat", user_name="Stranger",
    ttl=CENTURY, max_live=1,
)  # fmt: skip
for _ in range(2):
    assert store.redeem("link", "AAAAAAAA", by_platform="discord", by_user_id="d-guesser").error
store.approve("telegram", "friend")
store.close()
print(json.dumps({"live_link": live_link, "expired_link": expired_link, "used_link": used_link,
                  "live_approval": live_approval}))  # fmt: skip
