"""@segment/analytics-next in Debian's headless Chromium against a real `headwater serve`.

A static server started here serves tests/e2e/js: browser.html loads the library's UMD
build from node_modules, fetches its settings from Headwater (`cdnURL`) and then posts
page, alias, identify, track and group to Headwater's /v1/{p,a,i,t,g} from another origin
(so CORS is exercised too).
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Route, sync_playwright

from tests.e2e.test_python_sdk import check_delivered
from tests.support import HeadwaterServer

JS_DIR = Path(__file__).parent / "js"
PACKAGE = JS_DIR / "node_modules" / "@segment" / "analytics-next" / "package.json"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def static_site(root: Path) -> Iterator[str]:
    """Serve `root` over HTTP on a free loopback port; yields the base URL."""
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def run_page(page_url: str, write_key: str, cdn_url: str) -> list[dict[str, Any]]:
    """Open the page, call its sendAll() and return the events the library sent."""
    outside: list[str] = []
    problems: list[str] = []

    def local_only(route: Route) -> None:
        if route.request.url.startswith("http://127.0.0.1:"):
            route.continue_()
        else:  # nothing may come from a CDN: this machine has no internet
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", local_only)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on(
                "console",
                lambda msg: (
                    problems.append(f"console {msg.type}: {msg.text}")
                    if msg.type in {"error", "warning"}
                    else None
                ),
            )
            page.goto(page_url)
            results = page.evaluate("([writeKey, cdnURL]) => sendAll(writeKey, cdnURL)", [write_key, cdn_url])
        finally:
            browser.close()
    assert outside == [], f"the page reached beyond this machine: {outside}"
    failed = [result for result in results if result["failed"]]
    assert not failed, f"delivery failed: {failed}\n{problems}"
    assert problems == [], problems
    return [result["event"] for result in results]


@pytest.mark.browser
def test_analytics_next_in_chromium(server: HeadwaterServer) -> None:
    assert PACKAGE.is_file(), "tests/e2e/js/node_modules is missing: run scripts/install-e2e.sh"
    version = json.loads(PACKAGE.read_text(encoding="utf-8"))["version"]

    since = datetime.now(UTC)
    with static_site(JS_DIR) as site:
        page_url = f"{site}/browser.html"
        sent = run_page(page_url, server.write_key, server.url)
    assert [event["type"] for event in sent] == ["page", "alias", "identify", "track", "group"]

    stored = server.wait_for_events(len(sent))
    by_id = check_delivered(stored, sent, since=since)
    page, alias, identify, track, group = (by_id[event["messageId"]] for event in sent)

    anonymous_id = page["anonymousId"]
    assert anonymous_id and page.get("userId") is None
    assert (page["category"], page["name"]) == ("Docs", "Browser SDK")
    assert page["properties"]["section"] == "e2e"
    assert page["properties"]["url"] == page_url
    # The browser fills previousId in at send time: the anonymous id it had then.
    assert (alias["previousId"], alias["userId"]) == (anonymous_id, "browser-user-1")
    assert identify["userId"] == "browser-user-1"
    assert identify["traits"] == {"email": "ada@example.com", "plan": "pro"}
    assert track["event"] == "Button Clicked"
    assert track["properties"] == {"button": "signup", "count": 3}
    assert (group["groupId"], group["traits"]) == ("browser-group-1", {"name": "Acme", "seats": 12})
    for message in (alias, identify, track, group):
        assert message["anonymousId"] == anonymous_id
    for message in (identify, track, group):
        assert message["userId"] == "browser-user-1"
    for message in by_id.values():
        context = message["context"]
        assert context["library"] == {"name": "analytics.js", "version": f"next-{version}"}
        assert context["page"]["url"] == page_url
        # A client-side library: the server records the address the request came from.
        assert context["ip"] == "127.0.0.1", message
        assert context["userAgent"].startswith("Mozilla/5.0"), message
