"""A real Synapse homeserver for the Matrix tests, started from its own virtual environment.

Synapse pins many packages, so it lives outside the project's environment:
``.synapse-venv/`` at the repository root (``.ci/run`` makes it), or the Python
named by ``ONETHREAD_SYNAPSE_PYTHON``. Nothing is downloaded here: without that
Python the tests skip with the install command, except under ``CI=true``,
where a missing Synapse, or one that does not start, fails them.

The server listens on 127.0.0.1 only (a free port), keeps a SQLite database
and its media in a temporary folder, serves no federation, reaches no key
server and reports no statistics; rate limits are relaxed and password
hashing is cheap so the tests stay fast. Users are registered through the
admin API with the registration shared secret (open registration stays off).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "INSTALL_HINT",
    "Registered",
    "Synapse",
    "SynapseUnavailable",
    "synapse_python",
]

ROOT = Path(__file__).resolve().parent.parent
SERVER_NAME = "localhost"
INSTALL_HINT = "python3 -m venv .synapse-venv && .synapse-venv/bin/pip install matrix-synapse"
_START_TIMEOUT = 120.0  # a loaded 2-core machine creating the database from scratch


class SynapseUnavailable(RuntimeError):
    """Synapse is not installed or did not start; the message says why (and how to fix it)."""


def synapse_python() -> Path:
    """The Python of the Synapse environment: ``ONETHREAD_SYNAPSE_PYTHON`` or ``.synapse-venv``."""
    given = os.environ.get("ONETHREAD_SYNAPSE_PYTHON")
    return Path(given) if given else ROOT / ".synapse-venv" / "bin" / "python"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_LOG_CONFIG = """\
version: 1
formatters:
  plain:
    format: '%(asctime)s %(name)s %(levelname)s %(message)s'
handlers:
  console:
    class: logging.StreamHandler
    formatter: plain
    stream: ext://sys.stderr
root:
  level: WARNING
  handlers: [console]
disable_existing_loggers: false
"""

_RELAXED = {"per_second": 10000, "burst_count": 10000}


def _overrides(port: int, folder: Path, secret: str) -> str:
    """Keys appended to the generated ``homeserver.yaml`` (YAML: the last one wins)."""
    relaxed = json.dumps(_RELAXED)
    lines = [
        f"public_baseurl: http://127.0.0.1:{port}/",
        "listeners:",
        f"  - port: {port}",
        "    bind_addresses: ['127.0.0.1']",
        "    type: http",
        "    tls: false",
        "    x_forwarded: false",
        "    resources:",
        "      - names: [client]",
        "        compress: false",
        "database:",
        "  name: sqlite3",
        "  args:",
        f"    database: {folder / 'homeserver.db'}",
        f"media_store_path: {folder / 'media'}",
        f"log_config: {folder / 'log.yaml'}",
        f"registration_shared_secret: {json.dumps(secret)}",
        "enable_registration: false",
        # Nothing leaves 127.0.0.1: no federation, no key servers, no stats, no previews.
        "federation_domain_whitelist: []",
        "trusted_key_servers: []",
        "suppress_key_server_warning: true",
        "report_stats: false",
        "url_preview_enabled: false",
        "enable_metrics: false",
        "presence:",
        "  enabled: false",
        "bcrypt_rounds: 4",
        f"rc_message: {relaxed}",
        f"rc_registration: {relaxed}",
        f"rc_login: {{address: {relaxed}, account: {relaxed}, failed_attempts: {relaxed}}}",
        f"rc_joins: {{local: {relaxed}, remote: {relaxed}}}",
        f"rc_joins_per_room: {relaxed}",
        f"rc_invites: {{per_room: {relaxed}, per_user: {relaxed}, per_issuer: {relaxed}}}",
        f"rc_admin_redaction: {relaxed}",
        f"rc_media_create: {relaxed}",
        f"rc_room_creation: {relaxed}",
        f"rc_presence: {{per_user: {relaxed}}}",
        f"rc_delayed_event_mgmt: {relaxed}",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Registered:
    """A user made on the server: full id, password, an access token and its device."""

    user_id: str
    password: str
    access_token: str
    device_id: str


class Synapse:
    """One Synapse process for the test session (``start()``/``stop()``)."""

    def __init__(self, folder: Path, python: Path | None = None) -> None:
        self.folder = folder
        self.python = python or synapse_python()
        self.port = 0
        self.secret = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = folder / "synapse.log"
        self._counter = 0

    @property
    def url(self) -> str:
        """The homeserver's base URL (client-server API)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Generate the config, start Synapse and wait until it answers.

        Raises ``SynapseUnavailable`` (with the install command, or the tail
        of Synapse's log) when it is not installed or does not come up.
        """
        if not self.python.exists():
            raise SynapseUnavailable(
                f"no Synapse environment at {self.python}; install one with: {INSTALL_HINT} "
                "(or point ONETHREAD_SYNAPSE_PYTHON at its python)"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "homeserver.yaml"
        generate = [
            str(self.python), "-m", "synapse.app.homeserver", "--server-name", SERVER_NAME,
            "--config-path", str(config), "--generate-config", "--report-stats=no",
            "--data-directory", str(self.folder),
        ]  # fmt: skip
        done = subprocess.run(generate, capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            raise SynapseUnavailable(
                "synapse --generate-config failed: " + done.stderr.decode(errors="replace")[-2000:]
            )
        self.port = _free_port()
        (self.folder / "log.yaml").write_text(_LOG_CONFIG)
        # The generated file has no final newline: the overrides start on a new line.
        with config.open("a") as f:
            f.write("\n" + _overrides(self.port, self.folder, self.secret))
        text = config.read_text()
        if "matrix.org" in text.split("\ntrusted_key_servers: []", 1)[1]:
            raise SynapseUnavailable("the test config still names matrix.org")
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(self.python), "-m", "synapse.app.homeserver", "--config-path", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
        )
        log.close()
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SynapseUnavailable(f"Synapse exited ({self.process.returncode}):\n"
                                         + self.log_tail())  # fmt: skip
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise SynapseUnavailable(
            f"Synapse did not answer within {_START_TIMEOUT:g}s:\n" + self.log_tail()
        )

    def log_tail(self, size: int = 3000) -> str:
        """The end of Synapse's log (for failure messages)."""
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def _request(self, method: str, path: str, body: object | None = None) -> dict[str, object]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            result: dict[str, object] = json.loads(resp.read())
        return result

    def register(
        self, prefix: str = "user", *, password: str = "", admin: bool = False
    ) -> Registered:
        """Register a new user (``{prefix}{n}`` plus a random tail) with the shared secret."""
        self._counter += 1
        name = f"{prefix}{self._counter}x{secrets.token_hex(3)}"
        password = password or secrets.token_hex(12)
        nonce = str(self._request("GET", "/_synapse/admin/v1/register")["nonce"])
        # The MAC covers nonce, user, password and "admin"/"notadmin", NUL-separated.
        fields = (nonce, name, password, "admin" if admin else "notadmin")
        mac = hmac.new(self.secret.encode(), b"\x00".join(f.encode() for f in fields),
                       hashlib.sha1)  # fmt: skip
        message = mac.hexdigest()
        done = self._request(
            "POST",
            "/_synapse/admin/v1/register",
            {"nonce": nonce, "username": name, "password": password, "admin": admin,
             "mac": message},
        )  # fmt: skip
        return Registered(
            str(done["user_id"]), password, str(done["access_token"]), str(done["device_id"])
        )
