"""``vvhost serve``, ``vvhost audit`` and ``vvhost quickstart``."""

from __future__ import annotations

import click

from . import output
from .base import Session, json_option, pass_session


@click.command()
@click.option(
    "--state-dir",
    envvar="VVHOST_STATE_DIR",
    default="/var/lib/vvhost",
    show_default=True,
    help="Catalog and default array live here.",
)
@click.option(
    "--db-url",
    envvar="VVHOST_DB_URL",
    default=None,
    help="SQLAlchemy URL of the catalog (default: SQLite in the state dir).",
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.option(
    "--keep-endpoints",
    is_flag=True,
    envvar="VVHOST_KEEP_ENDPOINTS",
    help="Leave endpoint daemons running at exit (the next start adopts them).",
)
@click.option(
    "--listen",
    envvar="VVHOST_LISTEN",
    default=None,
    help="Also serve HOST:PORT over TLS; every request needs a bearer token.",
)
@click.option("--tls-cert", envvar="VVHOST_TLS_CERT", default=None, help="PEM certificate.")
@click.option("--tls-key", envvar="VVHOST_TLS_KEY", default=None, help="PEM private key.")
@click.option(
    "--reconcile-interval",
    envvar="VVHOST_RECONCILE_INTERVAL",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds between background audits (default 300; 0: none).",
)
@click.option(
    "--node",
    envvar="VVHOST_NODE",
    default=None,
    help="The node this replica runs on (default: the host name).",
)
@click.option(
    "--replica",
    envvar="VVHOST_REPLICA",
    default=None,
    help="This replica's id (default: NODE-<random>, new at every start).",
)
@click.option(
    "--lease",
    envvar="VVHOST_LEASE",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds a replica's lease lasts (default 3; PostgreSQL catalog).",
)
@click.option(
    "--heartbeat",
    envvar="VVHOST_HEARTBEAT",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds between lease renewals (default 1).",
)
@pass_session
def serve(
    s: Session,
    state_dir: str,
    db_url: str | None,
    log_level: str,
    keep_endpoints: bool,
    listen: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    reconcile_interval: float | None,
    node: str | None,
    replica: str | None,
    lease: float | None,
    heartbeat: float | None,
) -> None:
    """Run the control plane on the unix socket (--socket), and on TCP+TLS (--listen).

    Several replicas (each its own --state-dir, on one or several nodes) may share
    one PostgreSQL catalog (--db-url): they all answer the API, and when one dies
    another finishes its operations once its lease expires."""
    import os

    from ..server import Listen, ReplicaOptions
    from ..server import serve as run

    tcp = Listen.parse(listen, tls_cert, tls_key) if listen else None
    run(
        os.path.abspath(state_dir),
        s.socket,
        db_url,
        log_level,
        keep_endpoints,
        tcp,
        reconcile_interval,
        ReplicaOptions(node, replica, lease, heartbeat),
    )


@click.command()
@click.option(
    "--fix",
    is_flag=True,
    help="First repair what is safe: stale LUNs and exports, orphans vvhost made.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds a volume must have been an orphan before --fix removes it (default 3600).",
)
@json_option
@pass_session
def audit(s: Session, fix: bool, grace: float | None, as_json: bool) -> None:
    """Check that catalog and arrays agree (no orphans, counts right); exit 1 if not."""
    if grace is not None and not fix:
        raise click.UsageError("--grace goes with --fix")
    report = s.client.audit_fix(grace) if fix else s.client.audit()
    if as_json:
        output.emit_json(report)
    else:
        for r in report.get("repairs", []):
            click.echo(f"{r['action']}: {r['what']} ({r['reason']})")
        click.echo(
            f"{report['vvols']} vvols in {report['containers']} containers on "
            f"{report['arrays']} arrays: {'consistent' if report['ok'] else 'PROBLEMS'}"
        )
        for problem in report["problems"]:
            click.echo(f"  {problem}")
    if not report["ok"]:
        raise SystemExit(1)


@click.command()
@click.option("--state-dir", default=None, help="Where to put the demo (default: a new temp dir).")
@click.option("--keep", is_flag=True, help="Keep everything running until Ctrl-C, and the files.")
@click.option("--cleanup", is_flag=True, help="Remove what a --keep run in --state-dir left.")
@click.option(
    "--ceph",
    is_flag=True,
    help="Start a private Ceph cluster: the VM's disks are RBD images opened by librbd.",
)
def quickstart(state_dir: str | None, keep: bool, cleanup: bool, ceph: bool) -> None:
    """The tour: control plane, a libvirt host with the hook, a datastore, a VM on vvols."""
    from .quickstart import run_quickstart

    if cleanup and not state_dir:
        raise click.UsageError("--cleanup needs the --state-dir of the run to remove")
    run_quickstart(state_dir, keep, cleanup, ceph)
