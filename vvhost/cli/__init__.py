"""The ``vvhost`` command line: a client of the control plane API.

Every failure prints one line ``vvhost: error: ...`` on stderr and exits with
the error's class (see :mod:`vvhost.errors`); usage mistakes exit 2.
"""

from __future__ import annotations

import sys

import click

from ..errors import VvhostError
from .base import cli
from .binding import binding, host, pe
from .convert import convert
from .events import events, health
from .fencing import host_fence  # noqa: F401  (adds `host fence|unfence`, `vm recover`)
from .inventory import array, container
from .nbdcreds import host_nbd_credentials  # noqa: F401  (adds `host nbd-credentials`)
from .replicas import replica
from .serve import audit, quickstart, serve
from .tenancy import datastore, tenant, token
from .vm import hook, vm
from .vmmigrate import vm_migrate  # noqa: F401  (adds `vm migrate`)
from .vmresume import vm_resume  # noqa: F401  (adds `vm resume`)
from .vmsnap import vm_snapshot  # noqa: F401  (adds the snapshot commands to `vm`)
from .vmstorage import vm_move_storage  # noqa: F401  (adds `vm move-storage`)
from .vvol import vvol

cli.add_command(array)
cli.add_command(container)
cli.add_command(vvol)
cli.add_command(host)
cli.add_command(pe)
cli.add_command(binding)
cli.add_command(tenant)
cli.add_command(token)
cli.add_command(datastore)
cli.add_command(vm)
cli.add_command(hook)
cli.add_command(serve)
cli.add_command(quickstart)
cli.add_command(audit)
cli.add_command(convert)
cli.add_command(events)
cli.add_command(health)
cli.add_command(replica)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="vvhost", standalone_mode=False)
    except VvhostError as exc:
        click.echo(f"vvhost: error: {exc.message}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("vvhost: error: aborted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"vvhost: error: {exc.format_message()}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("vvhost: error: interrupted", err=True)
        return 130
    return 0


def entry() -> None:
    sys.exit(main())
