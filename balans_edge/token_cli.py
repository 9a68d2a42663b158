"""``balans-edge token ...``: make API tokens and their hashed form for the config."""

from __future__ import annotations

import sys

import click

from balans_edge.core.roles import ROLES
from balans_edge.core.tokens import new_token, token_digest, weakness


@click.group()
def token() -> None:
    """API tokens: a new random one, or the hash of one to put in the configuration."""


@token.command("new")
@click.option("--name", default="NAME", show_default=True, help="The user's name in the printed config lines.")
@click.option("--role", type=click.Choice(ROLES), default="viewer", show_default=True)
def new_command(name: str, role: str) -> None:
    """Print a random token (give it to the client) and the config line that stores only its hash."""
    value = new_token()
    click.echo(f"token: {value}")
    click.echo(f'config: {{ name = "{name}", role = "{role}", token_sha256 = "{token_digest(value).hex()}" }}')


@token.command("hash")
def hash_command() -> None:
    """Read a token from standard input (or a hidden prompt) and print its token_sha256.

    Not an argument: it would stay in the shell history and the process list."""
    value = click.prompt("token", hide_input=True) if sys.stdin.isatty() else sys.stdin.readline().strip()
    if len(value) < 16:
        raise click.ClickException("a token needs at least 16 characters")
    reason = weakness(value)
    if reason:
        click.echo(f"warning: this token is weak: {reason}", err=True)
    click.echo(token_digest(value).hex())
