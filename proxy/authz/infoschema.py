"""Which `information_schema` tables a statement may read.

Reading them needs no grant: the session rewrites the statement so each one shows only the
objects the person holds grants on (proxy/authz/metadata.py), and the analysis lists them in
`Analysis.metadata_tables` instead of as requirements. Only tables that rewrite can filter are
readable; the others are denied with DenyCode.METADATA, with the reason below where there is a
specific one. Names are compared case-insensitively, as MySQL compares them.
"""

from __future__ import annotations

from proxy.authz.model import DenyCode
from proxy.authz.outcome import Denied

# Per-object tables (filtered by schema and object name, or by schema) and server-wide tables
# with nothing per-object in them. Must equal metadata.FILTERABLE (tests/authz checks it).
READABLE = frozenset(
    """
    schemata tables columns statistics key_column_usage table_constraints referential_constraints
    views partitions check_constraints triggers routines parameters events
    character_sets collations collation_character_set_applicability engines keywords sql_functions
    """.split()
)

_SHARED_IDENTITY = (
    "describes the privileges of the shared database account, not yours; "
    "jitproxy grants decide what you may do"
)
_OTHER_SESSIONS = "shows other sessions of the shared database account"
_SERVER_WIDE = "shows server-wide state"
_UNFILTERABLE = "cannot be filtered to the objects you are granted"

_REASONS: dict[str, str] = {
    **dict.fromkeys(
        """
        user_privileges schema_privileges table_privileges column_privileges applicable_roles
        enabled_roles administrable_role_authorizations role_column_grants role_routine_grants
        role_table_grants user_attributes
        """.split(),
        _SHARED_IDENTITY,
    ),
    **dict.fromkeys(
        """
        processlist innodb_trx innodb_locks innodb_lock_waits metadata_lock_info profiling
        optimizer_trace user_statistics client_statistics index_statistics table_statistics
        user_variables
        """.split(),
        _OTHER_SESSIONS,
    ),
    **dict.fromkeys(
        """
        global_status session_status global_variables session_variables plugins all_plugins
        files tablespaces resource_groups
        """.split(),
        _SERVER_WIDE,
    ),
}


def readable(table: str) -> str:
    """The lower-case name of a readable information_schema table; denies any other."""
    name = table.lower()
    if name in READABLE:
        return name
    reason = _REASONS.get(name)
    if reason is None:
        reason = _SERVER_WIDE if name.startswith("innodb_") else _UNFILTERABLE
    detail = f"information_schema.{table} is not available through jitproxy: it {reason}"
    raise Denied(DenyCode.METADATA, detail)
