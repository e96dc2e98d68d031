"""What `headwater serve` prints at start: where it listens, the write keys, SDK snippets."""

from __future__ import annotations

from rich.console import Console

from headwater.settings import Settings


def sdk_snippets(url: str, write_key: str) -> dict[str, tuple[str, str]]:
    """{SDK name: (syntax, code)} pointing each Segment SDK at this server."""
    return {
        "Python (segment-analytics-python)": (
            "python",
            "import segment.analytics as analytics\n\n"
            f'analytics.write_key = "{write_key}"\n'
            f'analytics.host = "{url}"\n'
            'analytics.track("user-1", "Signed Up", {"plan": "pro"})\n'
            "analytics.flush()",
        ),
        "Node (@segment/analytics-node)": (
            "javascript",
            "import { Analytics } from '@segment/analytics-node'\n\n"
            f"const analytics = new Analytics({{ writeKey: '{write_key}', host: '{url}' }})\n"
            "analytics.track({ userId: 'user-1', event: 'Signed Up' })\n"
            "await analytics.closeAndFlush()",
        ),
        "Browser (@segment/analytics-next)": (
            "javascript",
            "import { AnalyticsBrowser } from '@segment/analytics-next'\n\n"
            f"const analytics = AnalyticsBrowser.load({{ writeKey: '{write_key}', cdnURL: '{url}' }})\n"
            "analytics.track('Signed Up')",
        ),
    }


def print_welcome(console: Console, settings: Settings, *, first_start: bool) -> None:
    url = f"http://{settings.host}:{settings.port}"
    console.print(f"[bold]Headwater[/] on [link={url}]{url}[/]  ·  data in {settings.data_dir}")
    console.print(f"Workspace: {settings.config_path}")
    if not settings.workspace.sources:
        console.print("[yellow]No sources yet: add one under `sources:` in the workspace file.[/]")
        return
    for source in settings.workspace.sources:
        console.print(
            f"  source [cyan]{source.name}[/] ({source.slug})  write key: [bold]{source.write_key}[/]",
            soft_wrap=True,
        )
    for destination in settings.workspace.destinations:
        console.print(f"  destination [cyan]{destination.name}[/] ({destination.type})", highlight=False)
    if any(destination.type == "duckdb" for destination in settings.workspace.destinations):
        slug = settings.workspace.sources[0].slug
        console.print(
            f'  query the warehouse: headwater sql "SELECT event, count(*) FROM {slug}.tracks GROUP BY 1"',
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
    if first_start:
        console.print("\nA new workspace with one source was created. Point a Segment SDK at Headwater:")
        first = settings.workspace.sources[0]
        for title, (_language, code) in sdk_snippets(url, first.write_key).items():
            console.rule(f"[bold]{title}", align="left")
            console.print(code, soft_wrap=True, highlight=False, markup=False)
