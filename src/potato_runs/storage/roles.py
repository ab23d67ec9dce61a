"""Least privilege in PostgreSQL: the owner role and the serving role `potato_app`.

- The **owner** (`potato_owner`) owns the database, its `public` schema and every
  object the migrations create; migrations (DDL) run as it.
- **`potato_app`** is what every connection of a running server uses (the serving,
  admin and shadow pools, the flags LISTEN connection, the health ping). It owns
  nothing and gets only: CONNECT on the database, USAGE on the schema, SELECT, INSERT,
  UPDATE and DELETE on the service's tables (SELECT only on `schema_migrations`, which
  offline operator commands read to refuse a stale schema), USAGE on the sequences and
  EXECUTE on the service's functions. No TRUNCATE, REFERENCES or TRIGGER, no CREATE on
  the schema or the database, no TEMP (no code path uses temporary tables). A SQL
  injection through the server can then read and change rows, but never drop, alter
  or truncate a table.

`grant_app_privileges` runs at the end of every `migrate()`, inside the migration lock,
so a table added by a later migration is granted without anyone remembering to.
`prepare_cluster` is the embedded cluster's one-time (and idempotent) setup, run by
its superuser; an operator's own PostgreSQL gets the same from the SQL in
docs/security.md.
"""

from __future__ import annotations

import asyncpg

OWNER_ROLE = "potato_owner"
APP_ROLE = "potato_app"
MIGRATIONS_TABLE = "schema_migrations"

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")

# Objects of the current schema that belong to the service: not part of an extension
# (btree_gist's functions stay as the extension made them), and owned by a role the
# migrating role may act for (itself, or anyone when it is a superuser).
_OURS = """
    n.nspname = current_schema()
    AND NOT EXISTS (SELECT 1 FROM pg_depend d
                     WHERE d.classid = {catalog}::regclass AND d.objid = o.oid
                       AND d.deptype = 'e')
    AND pg_has_role(current_user, o.{owner}, 'USAGE')
"""

_MISSING_GRANTS = f"""
SELECT format('GRANT %s ON TABLE %s TO %I',
              CASE WHEN o.relname = $2 THEN 'SELECT' ELSE 'SELECT, INSERT, UPDATE, DELETE' END,
              o.oid::regclass, $1::text)
  FROM pg_class o JOIN pg_namespace n ON n.oid = o.relnamespace
 WHERE o.relkind IN ('r', 'p', 'v', 'm')
   AND {_OURS.format(catalog="'pg_class'", owner="relowner")}
   AND NOT (has_table_privilege($1, o.oid, 'SELECT')
            AND (o.relname = $2 OR (has_table_privilege($1, o.oid, 'INSERT')
                                    AND has_table_privilege($1, o.oid, 'UPDATE')
                                    AND has_table_privilege($1, o.oid, 'DELETE'))))
UNION ALL
SELECT format('GRANT USAGE ON SEQUENCE %s TO %I', o.oid::regclass, $1::text)
  FROM pg_class o JOIN pg_namespace n ON n.oid = o.relnamespace
 WHERE o.relkind = 'S'
   AND {_OURS.format(catalog="'pg_class'", owner="relowner")}
   AND CASE WHEN o.relkind = 'S'   -- evaluated for sequences only, whatever the plan
            THEN NOT has_sequence_privilege($1, o.oid, 'USAGE') END
UNION ALL
SELECT format('REVOKE EXECUTE ON ROUTINE %s FROM PUBLIC; GRANT EXECUTE ON ROUTINE %s TO %I',
              o.oid::regprocedure, o.oid::regprocedure, $1::text)
  FROM pg_proc o JOIN pg_namespace n ON n.oid = o.pronamespace
 WHERE o.prokind IN ('f', 'p')
   AND {_OURS.format(catalog="'pg_proc'", owner="proowner")}
   AND (NOT has_function_privilege($1, o.oid, 'EXECUTE')
        OR EXISTS (SELECT 1 FROM aclexplode(coalesce(o.proacl, acldefault('f', o.proowner))) a
                    WHERE a.grantee = 0))
"""
"""One GRANT (or REVOKE ... FROM PUBLIC; GRANT) statement per object that lacks them:
an up-to-date schema gives none, so a restart changes no catalog row."""


async def role_exists(conn: asyncpg.Connection, role: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role))


async def grant_app_privileges(conn: asyncpg.Connection, role: str = APP_ROLE,
                               timeout: float | None = None) -> int:
    """Grants `role` what the server needs on every object of the current schema the
    connected role may grant on (see the module docstring); returns how many objects
    changed. Nothing happens when `role` does not exist (a deployment that serves with
    one role) or is the connected role itself (`serve --dsn` as potato_app: it owns
    nothing, so it has nothing to grant). Call it in one transaction with the
    migrations, or under the migration lock: concurrent GRANTs on one object fail."""
    if await conn.fetchval("SELECT current_user = $1::name", role, timeout=timeout):
        return 0
    if not await role_exists(conn, role):
        return 0
    statements = [r[0] for r in await conn.fetch(_MISSING_GRANTS, role, MIGRATIONS_TABLE,
                                                 timeout=timeout)]
    if statements:
        async with conn.transaction():
            for statement in statements:
                await conn.execute(statement, timeout=timeout)
    return len(statements)


async def ddl_powers(conn: asyncpg.Connection) -> list[str]:
    """Why the connected role could change the schema (empty when it cannot): what
    `serve` warns about when the serving role is not a DML-only role."""
    row = await conn.fetchrow(
        """SELECT r.rolsuper,
                  coalesce(has_schema_privilege(current_schema(), 'CREATE'), false) AS cs,
                  has_database_privilege(current_database(), 'CREATE') AS cd,
                  EXISTS (SELECT 1 FROM pg_class c
                           WHERE c.relnamespace = coalesce(
                                     (SELECT oid FROM pg_namespace
                                       WHERE nspname = current_schema()), 0)
                             AND c.relkind IN ('r', 'p')
                             AND pg_has_role(current_user, c.relowner, 'MEMBER')) AS owns
             FROM pg_roles r WHERE r.rolname = current_user""")
    if row is None:
        return []
    powers = []
    if row["rolsuper"]:
        return ["it is a superuser"]
    if row["owns"]:
        powers.append("it owns the tables")
    if row["cs"]:
        powers.append("it has CREATE on the schema")
    if row["cd"]:
        powers.append("it has CREATE on the database")
    return powers


async def prepare_cluster(conn: asyncpg.Connection, *, app_password: str,
                          database: str | None = None) -> None:
    """The embedded cluster's roles, as its superuser connected to the service's database;
    idempotent, so it also upgrades a cluster created before the roles existed:

    - creates `potato_owner` (NOLOGIN: the superuser migrates through SET ROLE) and
      `potato_app` (LOGIN, `app_password`, set again every time so the password file
      stays the truth);
    - makes the owner the owner of the database (hence of its `public` schema, PG 15's
      pg_database_owner) and of every object the superuser's migrations made;
    - takes CONNECT and TEMP on the database, and everything on `public`, from PUBLIC,
      and gives `potato_app` CONNECT and USAGE (its table grants come from migrate());
    - takes CONNECT on `postgres` and `template1` from PUBLIC: potato_app reaches no
      other database."""
    db = await conn.fetchval("SELECT quote_ident(coalesce($1, current_database()))", database)
    password = await conn.fetchval("SELECT quote_literal($1::text)", app_password)
    app = APP_ROLE   # a plain identifier, like OWNER_ROLE
    async with conn.transaction():
        # One creator at a time across the cluster (CREATE ROLE is not IF NOT EXISTS).
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('potato-runs roles'))")
        if not await role_exists(conn, OWNER_ROLE):
            await conn.execute(f"CREATE ROLE {OWNER_ROLE} NOLOGIN")
        if not await role_exists(conn, APP_ROLE):
            await conn.execute(f"CREATE ROLE {app} LOGIN")
        await conn.execute(f"ALTER ROLE {app} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                           f"NOREPLICATION NOBYPASSRLS PASSWORD {password}")
        await conn.execute(f"ALTER DATABASE {db} OWNER TO {OWNER_ROLE}")
        for statement in await conn.fetch(_TO_OWNER, OWNER_ROLE):
            await conn.execute(statement[0])
        await conn.execute(f"""
            REVOKE ALL ON DATABASE {db} FROM PUBLIC;
            GRANT CONNECT ON DATABASE {db} TO {app};
            REVOKE ALL ON SCHEMA public FROM PUBLIC;
            GRANT USAGE ON SCHEMA public TO {app};
            REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
            REVOKE CONNECT ON DATABASE template1 FROM PUBLIC""")


_TO_OWNER = """
SELECT format('ALTER %s %s OWNER TO %I',
              CASE o.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                             WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
              o.oid::regclass, $1::text)
  FROM pg_class o JOIN pg_namespace n ON n.oid = o.relnamespace
 WHERE n.nspname = 'public' AND o.relkind IN ('r', 'p', 'v', 'm', 'S')
   AND o.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
   AND NOT EXISTS (SELECT 1 FROM pg_depend d     -- extension members; identity/serial
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = o.oid
                      AND d.deptype IN ('e', 'i', 'a'))
UNION ALL
SELECT format('ALTER ROUTINE %s OWNER TO %I', o.oid::regprocedure, $1::text)
  FROM pg_proc o JOIN pg_namespace n ON n.oid = o.pronamespace
 WHERE n.nspname = 'public' AND o.prokind IN ('f', 'p')
   AND o.proowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = o.oid
                      AND d.deptype = 'e')
"""
"""The upgrade of a cluster migrated by its superuser: every table, view, free-standing
sequence and function the superuser owns in `public` passes to the owner role (a
table's identity and serial sequences follow their table)."""
