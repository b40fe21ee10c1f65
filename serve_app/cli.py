"""The ``promethios`` command line: user and API-key administration, schema upgrades.

    promethios users create USER_ID      # prints the new API key as the last line
    promethios users revoke-key KEY
    promethios db upgrade
    promethios audit verify AGENT_ID     # exit 1 naming the first broken record
    promethios audit rotate-key          # a new current audit key (the key file)

The database is ``DATABASE_URL``, else the SQLite file under ``var/`` (see settings).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from serve_app.cli_client import agents_app, chat

if TYPE_CHECKING:
    from serve_app.store import Store

app = typer.Typer(help="Promethios Native operations.", no_args_is_help=True, add_completion=False)
users_app = typer.Typer(help="Users and their API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(db_app, name="db")
audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(agents_app, name="agents")
app.command("chat")(chat)


def _database_url() -> str:
    from serve_app.settings import get_settings

    return get_settings().resolved_database_url


def _display_url(url: str) -> str:
    """Return the URL with any password masked."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _open_store() -> Store:
    """Return a Store on the configured database, migrated to the newest schema.

    Exits with status 1 and a message on stderr when the database is unreachable
    or the migration fails.
    """
    from serve_app.store import Store

    url = _database_url()
    try:
        store = Store(url)
        store.migrate()
    except Exception as exc:  # the operator needs the reason, not a traceback
        typer.echo(f"error: cannot open database {_display_url(url)}: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    return store


@users_app.command("create")
def users_create(
    user_id: str = typer.Argument(..., help="The user's id (at most 128 characters)."),
) -> None:
    """Create the user if needed and issue a new API key (printed once, as the last line)."""
    store = _open_store()
    try:
        key = store.create_api_key(user_id)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    finally:
        store.close()
    typer.echo(f"User {user_id!r} is ready. New API key (shown once, store it now):")
    typer.echo(key)


@users_app.command("revoke-key")
def users_revoke_key(key: str = typer.Argument(..., help="The API key to revoke.")) -> None:
    """Revoke an API key; exits 1 when the key is unknown or already revoked."""
    store = _open_store()
    try:
        revoked = store.revoke_api_key(key)
    finally:
        store.close()
    if not revoked:
        typer.echo("error: no active API key matches", err=True)
        raise typer.Exit(code=1)
    typer.echo("API key revoked.")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration (a no-op when the schema is current)."""
    store = _open_store()
    store.close()
    typer.echo(f"Database {_display_url(store.database_url)} is at the newest schema.")


@audit_app.command("verify")
def audit_verify(
    agent_id: str = typer.Argument(..., help="The agent whose chain to check."),
) -> None:
    """Recompute the agent's audit chain; exits 1 naming the first broken record."""
    import json

    store = _open_store()
    try:
        report = store.verify_audit_chain(agent_id)
    finally:
        store.close()
    typer.echo(json.dumps(report.to_dict(), indent=2))
    if not report.intact:
        broken = report.first_broken
        if broken:
            typer.echo(
                f"error: audit chain of {agent_id} broken at record {broken.get('message_id')} "
                f"(position {broken.get('position')}): {broken.get('reason')}",
                err=True,
            )
        if report.checkpoint and not report.checkpoint["ok"]:
            typer.echo(
                f"error: audit chain of {agent_id} against its checkpoint of "
                f"{report.checkpoint['at']}: {report.checkpoint['reason']}",
                err=True,
            )
        raise typer.Exit(code=1)


@audit_app.command("rotate-key")
def audit_rotate_key() -> None:
    """Make a new audit key current in the key file; earlier keys stay to verify what they
    signed. With PROMETHIOS_AUDIT_KEYS set, rotate there instead (add id:secret, set
    PROMETHIOS_AUDIT_KEY_ID) and restart."""
    from serve_app.settings import get_settings
    from serve_app.store.audit import audit_dir, rotate_key_file

    settings = get_settings()
    if settings.audit_keys:
        typer.echo(
            "error: the audit keys come from PROMETHIOS_AUDIT_KEYS: add a new id:secret "
            "there, set PROMETHIOS_AUDIT_KEY_ID to it, keep the old ones, and redeploy",
            err=True,
        )
        raise typer.Exit(code=2)
    path = audit_dir(settings) / "keys.json"
    key_id = rotate_key_file(path)
    typer.echo(f"audit key {key_id} is current in {path}; restart the metrics writer")


def main() -> None:
    """Entry point of the ``promethios`` script."""
    app()


if __name__ == "__main__":
    main()
