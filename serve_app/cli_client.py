"""`promethios agents create|list` and `promethios chat AGENT_ID`: the API from a terminal.

They talk to a running server through `NativeLLMClient` (PROMETHIOS_API_URL,
PROMETHIOS_API_KEY, or --url/--api-key).
"""

from __future__ import annotations

import json
import sys

import typer

agents_app = typer.Typer(help="Agents on a running server.", no_args_is_help=True)

UrlOpt = typer.Option(None, "--url", help="API base URL (default PROMETHIOS_API_URL).")
KeyOpt = typer.Option(None, "--api-key", help="API key (default PROMETHIOS_API_KEY).")


def _client(url: str | None, api_key: str | None):  # type: ignore[no-untyped-def]
    from serve_app.client import NativeLLMClient

    try:
        return NativeLLMClient(url, api_key)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=1)


@agents_app.command("create")
def agents_create(
    name: str = typer.Argument(..., help="The agent's name."),
    description: str = typer.Option(None, help="What the agent is for."),
    compliance_mode: str = typer.Option("standard", help="strict | standard | permissive"),
    trust_threshold: float = typer.Option(0.5, help="0-1; below it strict/standard block."),
    max_tokens: int = typer.Option(128, help="Answer length limit."),
    temperature: float = typer.Option(0.7, help="0-2."),
    url: str = UrlOpt,
    api_key: str = KeyOpt,
) -> None:
    """Create an agent; prints it as JSON (its id is `agent_id`)."""
    from pydantic import ValidationError

    from serve_app.client import NativeLLMError

    with _client(url, api_key) as client:
        try:
            agent = client.create_native_agent(
                name,
                description,
                compliance_mode=compliance_mode,
                trust_threshold=trust_threshold,
                max_tokens=max_tokens,
                temperature=temperature,
            )
        except (NativeLLMError, ValidationError, OSError) as exc:
            raise _fail(exc) from exc
    typer.echo(json.dumps(agent, indent=2))


@agents_app.command("list")
def agents_list(
    limit: int = typer.Option(20, help="Page size (1-100)."),
    after: str = typer.Option(None, help="Continue after this agent id."),
    url: str = UrlOpt,
    api_key: str = KeyOpt,
) -> None:
    """One line per agent: id, name, compliance mode."""
    from serve_app.client import NativeLLMError

    with _client(url, api_key) as client:
        try:
            page = client.list_agents(limit, after)
        except (NativeLLMError, OSError) as exc:
            raise _fail(exc) from exc
    for agent in page.get("agents", page.get("data", [])):
        mode = (agent.get("config") or {}).get("compliance_mode", "")
        typer.echo(f"{agent['agent_id']}\t{agent.get('name', '')}\t{mode}")


def chat(
    agent_id: str = typer.Argument(..., help="The agent to talk to."),
    url: str = UrlOpt,
    api_key: str = KeyOpt,
) -> None:
    """Interactive governed chat: type a message, see the answer stream; /quit or EOF ends."""
    from serve_app.client import NativeLLMError

    interactive = sys.stdin.isatty()
    with _client(url, api_key) as client:
        while True:
            if interactive:
                typer.echo("you> ", nl=False)
            line = sys.stdin.readline()
            if not line or line.strip() in {"/quit", "/exit"}:
                break
            if not line.strip():
                continue
            typer.echo("agent> ", nl=False)
            try:
                for text in client.stream_chat(agent_id, line.strip()):
                    typer.echo(text, nl=False)
            except (NativeLLMError, OSError) as exc:
                typer.echo("")
                raise _fail(exc) from exc
            typer.echo("")
