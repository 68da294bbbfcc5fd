"""Alembic environment for riskd: driven by riskd.migrate, never by an alembic.ini.

riskd.migrate hands over the settings (and, online, an open connection) in
``config.attributes``; the version table lives in schema riskd, apart from the platform's.
With ``install`` set (an empty database going to head), the command is a stamp and head's SQL
from ``sql/`` runs first, in the same transaction. Offline (``--sql``), ``template_params``
may come from riskd.migrate too: the types read from the database when it could be reached.
"""

from alembic import context

from riskd.migrate import (
    SCHEMA,
    VERSION_TABLE,
    create_schema,
    install_head,
    prepare_templates,
    run_sql,
    script_begin,
)

config = context.config
settings = config.attributes["settings"]


def run_offline() -> None:
    # `riskd migrate --sql` hands over the parameters it read from the database when it could
    # reach one; else the reference schema's types
    if "template_params" not in config.attributes:
        config.attributes["template_params"] = prepare_templates(None, settings)
    context.configure(
        dialect_name="postgresql",
        literal_binds=True,
        version_table=VERSION_TABLE,
        version_table_schema=SCHEMA,
        transactional_ddl=True,
        output_buffer=config.attributes.get("output_buffer"),
    )
    with context.begin_transaction():
        run_sql(script_begin())  # what `riskd migrate` itself does (sql/migrate.sql)
        _migrate()


def run_online() -> None:
    connection = config.attributes["connection"]
    connection.exec_driver_sql(create_schema())
    config.attributes["template_params"] = prepare_templates(connection, settings)
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        version_table_schema=SCHEMA,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        _migrate()


def _migrate() -> None:
    if config.attributes.get("install"):
        install_head()
    context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
