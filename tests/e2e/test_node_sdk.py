"""@segment/analytics-node against a real `headwater serve`: every message lands, enriched.

tests/e2e/js/send-node.mjs sends identify, track, group and alias, awaits closeAndFlush()
and prints the events it sent; scripts/install-e2e.sh installs its node_modules.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.e2e.test_python_sdk import check_delivered
from tests.support import HeadwaterServer

JS_DIR = Path(__file__).parent / "js"
PACKAGE = JS_DIR / "node_modules" / "@segment" / "analytics-node" / "package.json"


def send_with_node(server: HeadwaterServer) -> list[dict[str, Any]]:
    """Run send-node.mjs against `server`: the events @segment/analytics-node says it sent."""
    node = shutil.which("node")
    assert node, "node is not installed"
    assert PACKAGE.is_file(), "tests/e2e/js/node_modules is missing: run scripts/install-e2e.sh"
    run = subprocess.run(
        [node, "send-node.mjs", server.url, server.write_key],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, f"send-node.mjs failed:\n{run.stdout}\n{run.stderr}"
    sent: list[dict[str, Any]] = json.loads(run.stdout)
    return sent


def test_analytics_node_batch(server: HeadwaterServer) -> None:
    version = json.loads(PACKAGE.read_text(encoding="utf-8"))["version"]
    since = datetime.now(UTC)
    sent = send_with_node(server)
    assert [event["type"] for event in sent] == ["identify", "track", "group", "alias"], sent

    stored = server.wait_for_events(len(sent))
    # _metadata is the library's transport bookkeeping, not part of the message.
    by_id = check_delivered(stored, sent, since=since, ignore=frozenset({"_metadata"}))
    identify, track, group, alias = (by_id[event["messageId"]] for event in sent)

    assert identify["type"] == "identify"
    assert identify["userId"] == "node-user-1"
    assert identify["traits"] == {"email": "grace@example.com", "plan": "team"}
    assert track["type"] == "track"
    assert track["event"] == "Order Completed"
    assert track["properties"] == {"total": 42.5, "items": 2}
    assert group["type"] == "group"
    assert group["groupId"] == "node-group-1"
    assert group["traits"] == {"name": "Initech", "seats": 40}
    assert alias["type"] == "alias"
    assert (alias["previousId"], alias["userId"]) == ("node-user-1", "node-user-2")
    for message in by_id.values():
        assert message["context"]["library"] == {
            "name": "@segment/analytics-node",
            "version": version,
        }
        # A server-side library: the request's address is the server's, not the user's.
        assert "ip" not in message["context"], message
