#!/bin/sh
# Patroni runs this once, on the member that created the cluster, with a
# superuser connection string: the vault's role and database. The vault
# creates its own schema in it (`phivault init`), so the role needs no more
# than to own the database.
set -eu
psql --no-psqlrc -v ON_ERROR_STOP=1 \
     -v password="$(cat /run/secrets/postgres-phivault-password)" "$1" <<'SQL'
CREATE ROLE phivault LOGIN PASSWORD :'password';
CREATE DATABASE phivault OWNER phivault;
SQL
