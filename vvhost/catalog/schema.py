"""Catalog tables (current schema).  Written in portable SQLAlchemy Core so the
same queries run on SQLite (embedded) and PostgreSQL (many hosts)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, nullable=False),
)

arrays = Table(
    "arrays",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("backend", String(32), nullable=False),
    Column("capabilities", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("fs_id", Text),  # migration 5
    Column("settings", Text),  # migration 8: the backend's settings record (JSON)
)

containers = Table(
    "containers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("capacity", BigInteger, nullable=False),
    Column("provisioned", BigInteger, nullable=False),
    Column("tenant", String(128)),
    Column("created", Float, nullable=False),
    # migration _v9_space: thin provisioning
    Column("overcommit", Float, nullable=False, server_default="1.0"),
    Column("reserve", BigInteger, nullable=False, server_default="0"),  # bytes kept free
    Column("reserve_spec", String(32)),  # as given: "5%" follows the capacity
    Column("alerts", String(32)),  # usage percentages that raise events ("80,90"; NULL: those)
)

container_arrays = Table(
    "container_arrays",
    metadata,
    Column("container_id", String(64), ForeignKey("containers.id"), primary_key=True),
    Column("array_id", String(64), ForeignKey("arrays.id"), primary_key=True),
    Column("position", Integer, nullable=False),
)

vvols = Table(
    "vvols",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(128)),
    Column("type", String(16), nullable=False),
    Column("container_id", String(64), ForeignKey("containers.id"), nullable=False),
    Column("array_id", String(64), ForeignKey("arrays.id"), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("parent_id", String(64)),
    Column("relation", String(16)),
    Column("readonly", Boolean, nullable=False),
    Column("state", String(16), nullable=False),
    Column("op_id", String(64)),
    Column("generation", BigInteger, nullable=False),
    Column("refs", Integer, nullable=False),
    Column("created", Float, nullable=False),
    Column("metadata", Text, nullable=False),
    Column("datastore_id", String(64)),  # migration 3
    Column("tenant", String(128)),  # migration 3
    Column("failure", Text),  # migration 5
    Column("locator", Text),  # migration 8: where the array keeps it (JSON; image ids)
    # migration _v9_space: the vvol's space figures, cached from its array
    Column("allocated", BigInteger, nullable=False, server_default="0"),
    Column("unique_bytes", BigInteger),  # None: the array cannot tell
    Column("charge", BigInteger, nullable=False, server_default="0"),  # in `provisioned`
    Column("held", BigInteger, nullable=False, server_default="0"),  # physical bytes counted
    Column("space_at", Float),  # when the figures were read
    Index("ix_vvols_parent", "parent_id"),
    Index("ix_vvols_name", "name"),
    # migration _v14_scale_indexes: listings page in (created, id) order, per filter
    Index("ix_vvols_created", "created", "id"),
    Index("ix_vvols_container_created", "container_id", "created", "id"),
    Index("ix_vvols_datastore", "datastore_id", "created", "id"),
    Index("ix_vvols_tenant", "tenant", "created", "id"),
)

journal = Table(
    "journal",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("op", String(32), nullable=False),
    Column("vvol_id", String(64)),
    Column("step", String(64), nullable=False),
    Column("args", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("tenant", String(128)),  # migration _v9_events: whose operation (its events)
    Column("owner", String(64)),  # migration _v13_replicas: the replica that runs it
    Column("owner_epoch", BigInteger),  # ... and that replica's lease epoch then
    UniqueConstraint("id"),
)

# -- added by migration 2: hosts, protocol endpoints, bindings ------------------------

hosts = Table(
    "hosts",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("iqn", String(256)),
    Column("created", Float, nullable=False),
    Column("tenant", String(128)),  # migration 3
    Column("fenced", Float),  # migration _v12_fencing: when it was fenced
)

pes = Table(
    "pes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("protocol", String(16), nullable=False),
    Column("array_id", String(64)),
    Column("portal", String(256)),
    Column("path", Text),
    Column("config", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("node", String(128)),  # migration _v13_replicas: the node whose replica runs it
)

# Cross-node endpoint changes (migration _v15_pe_sync): a replica that changed the
# bindings of another node's endpoint raises ``wanted``; the replica on that node
# makes the daemon present the catalog, then sets ``applied`` (and ``error``).
pe_sync = Table(
    "pe_sync",
    metadata,
    Column("pe_id", String(64), primary_key=True),
    Column("wanted", BigInteger, nullable=False),
    Column("applied", BigInteger, nullable=False),
    Column("error", Text),
    Column("state_dir", Text),  # the owner's state directory (where its sockets are)
)

# One iSCSI target per (PE, host) so the target ACL admits only that host's
# initiator; owner "*" is the shared target open to every initiator.
pe_targets = Table(
    "pe_targets",
    metadata,
    Column("pe_id", String(64), primary_key=True),
    Column("owner", String(128), primary_key=True),
    Column("tid", Integer, nullable=False),
    Column("iqn", String(256), nullable=False),
    Index("ux_pe_targets_tid", "pe_id", "tid", unique=True),  # migration _v11
)

bindings = Table(
    "bindings",
    metadata,
    Column("vvol_id", String(64), primary_key=True),
    Column("host", String(128), primary_key=True),
    Column("pe_id", String(64), primary_key=True),
    Column("secondary_id", String(256), nullable=False),
    Column("tid", Integer),
    Column("readonly", Boolean, nullable=False),
    Column("shared", Boolean, nullable=False),
    Column("refcount", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("op_id", String(64)),
    Column("created", Float, nullable=False),
    Column("owner", String(64)),  # migration _v13_replicas: the replica attaching/detaching it
    Index("ix_bindings_pe_tid", "pe_id", "tid"),  # migration _v14: the LUNs of one target
    Index("ix_bindings_host", "host"),
)

# -- added by migration 3: tenants, tokens, datastores --------------------------------

tenants = Table(
    "tenants",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("created", Float, nullable=False),
)

# Bearer tokens, stored as SHA-256 digests: kind "admin" or "host" (subject = host name).
tokens = Table(
    "tokens",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("subject", String(128), nullable=False),
    Column("created", Float, nullable=False),
    Column("last_used", Float),  # migration _v6_tenancy
    Index("ix_tokens_subject", "kind", "subject"),
)

datastores = Table(
    "datastores",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("capacity", BigInteger, nullable=False),
    Column("tenant", String(128)),
    Column("created", Float, nullable=False),
)

datastore_containers = Table(
    "datastore_containers",
    metadata,
    Column("datastore_id", String(40), primary_key=True),
    Column("container_id", String(64), primary_key=True),
    Column("position", Integer, nullable=False),
)

# Named counters that only ever grow (datastore ids are never reused).
sequences = Table(
    "sequences",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# -- added by migration 4: where a vvol was last bound, to bind it there again ----------

binding_hints = Table(
    "binding_hints",
    metadata,
    Column("vvol_id", String(64), primary_key=True),
    Column("host", String(128), primary_key=True),
    Column("pe_id", String(64), primary_key=True),
    Column("secondary_id", String(256), nullable=False),
    Index("ix_binding_hints_pe_host", "pe_id", "host"),  # migration _v14_scale_indexes
)

# -- added by migration _v6_tenancy: who started an operation (its progress answers only them)

op_owners = Table(
    "op_owners",
    metadata,
    Column("op_id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("subject", String(128), nullable=False),
    Column("created", Float, nullable=False),
)

# -- added by migration _v7_vm_leases: one VM operation at a time ---------------------------

vm_leases = Table(
    "vm_leases",
    metadata,
    Column("vvol_id", String(64), primary_key=True),  # the VM's config vvol
    Column("tenant", String(128)),
    Column("op", String(64), nullable=False),
    Column("host", String(128), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("token", String(64), nullable=False),
    Column("since", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("epoch", BigInteger, nullable=False),
)

# -- added by migration _v13_replicas: control-plane replicas and their leases --------------

replicas = Table(
    "replicas",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("node", String(128), nullable=False),
    Column("url", String(512)),  # where it answers the API, if it said
    Column("started", Float, nullable=False),
    Column("heartbeat", Float, nullable=False),  # the catalog's clock, epoch seconds
    Column("epoch", BigInteger, nullable=False),  # bumped when another replica fences it
    Column("lease_until", Float, nullable=False),  # its writes are refused after this
    Column("state", String(16), nullable=False),  # live | fenced
)

# -- added by migration _v16_iscsi_chap: each host's CHAP account at iSCSI endpoints --------

iscsi_chap = Table(
    "iscsi_chap",
    metadata,
    Column("host", String(128), primary_key=True),
    Column("username", String(160), nullable=False),  # new on every rotation (see chaprepo)
    Column("secret", String(64), nullable=False),
)

# -- added by migration _v17_replica_clients: the Ceph clients each replica opened ----------

replica_clients = Table(
    "replica_clients",
    metadata,
    Column("replica", String(64), primary_key=True),
    Column("array_id", String(64), primary_key=True),
    Column("addr", String(128), primary_key=True),  # IP:PORT/NONCE, what a blocklist takes
    Column("epoch", BigInteger, nullable=False),  # the replica's epoch when it connected
    Column("since", Float, nullable=False),  # the catalog's clock, epoch seconds
)

# epochs of replicas (PostgreSQL): never reused, even for a replica id registered again
EPOCH_SEQUENCE = "replica_epochs"

# -- added by migration _v19_nbd_tls: NBD over TLS shared by every node ---------------------

nbd_ca = Table(  # the one CA of the whole control plane (row id 1)
    "nbd_ca",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("cert", Text, nullable=False),
    Column("key", Text, nullable=False),
)

nbd_creds = Table(  # each host's current client credentials (nbdtlsrepo)
    "nbd_creds",
    metadata,
    Column("host", String(128), primary_key=True),
    Column("identity", String(256), nullable=False),  # the certificate's DN, as QEMU compares
    Column("cert", Text, nullable=False),
    Column("key", Text, nullable=False),
)

nbd_ports = Table(  # the port of each host's daemon at a TCP NBD endpoint
    "nbd_ports",
    metadata,
    Column("pe_id", String(64), primary_key=True),
    Column("host", String(128), primary_key=True),
    Column("port", Integer, nullable=False),
)
