"""A control plane on TCP+TLS with two tenants, for the tenancy tests::

tenants   alpha (host ha)            beta (host hb)
storage   container "shared" (both tenants' vvols), container "other",
          file endpoint "files", datastores ds-a (alpha) and ds-b (beta)
vvols     va (pattern A at 0 and CHUNK), its snapshot va@s1, va2   |  vb
tokens    one per host, one admin token "admin"
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.patterns import CHUNK, Patterns
from tests.tlsfixtures import start_tls_plane
from vvhost.client import Client
from vvhost.daemon import ServerProcess


@dataclass
class Tls:
    server: ServerProcess
    admin: Client  # over the unix socket
    url: str
    ca: str
    tokens: dict[str, str]
    ids: dict[str, str]

    def as_host(self, name: str) -> Client:
        return Client.https(self.url, self.tokens[name], self.ca)


@contextmanager
def tls_lab(tmp_path: str, patterns: Patterns) -> Iterator[Tls]:
    tls = start_tls_plane(tmp_path)
    server = tls.server
    admin = server.client()
    try:
        admin.tenant_create("alpha")
        admin.tenant_create("beta")
        tokens = {
            h: admin.host_add(h, f"iqn.2026-11.test:{h}", tenant)["token"]
            for h, tenant in (("ha", "alpha"), ("hb", "beta"))
        }
        tokens["admin"] = admin.admin_token()["token"]
        admin.container_create("shared", "4G")  # both tenants' vvols live in one container
        admin.container_create("other", "1G")
        admin.pe_create("files", "file", path=os.path.join(tmp_path, "nfs"))
        ds_a = admin.datastore_create("ds-a", "1G", ["shared"], tenant="alpha")["id"]
        ds_b = admin.datastore_create("ds-b", "1G", ["shared"], tenant="beta")["id"]
        t = Tls(
            server,
            admin,
            tls.url,
            tls.ca,
            tokens,
            {"ds-a": ds_a, "ds-b": ds_b},
        )
        a = t.as_host("ha")
        va = a.vvol_create(None, "16M", name="va", datastore="ds-a")
        patterns.write(admin.vvol(va["id"])["path"], "A", [0, CHUNK])
        t.ids.update(
            va=va["id"],
            sa=a.vvol_snapshot("va", name="va@s1")["id"],
            va2=a.vvol_create(None, "16M", name="va2", datastore="ds-a")["id"],
        )
        a.close()
        b = t.as_host("hb")
        t.ids["vb"] = b.vvol_create(None, "16M", name="vb", datastore="ds-b")["id"]
        b.close()
        yield t
    finally:
        admin.close()
        server.stop()
