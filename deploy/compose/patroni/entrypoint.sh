#!/bin/sh
# Patroni takes its passwords from the configuration or the environment,
# not from files: read them from the Compose secrets here, so that they are
# in neither the image nor the Compose file.
set -eu
PATRONI_SUPERUSER_PASSWORD=$(cat /run/secrets/postgres-superuser-password)
PATRONI_REPLICATION_PASSWORD=$(cat /run/secrets/postgres-replication-password)
export PATRONI_SUPERUSER_PASSWORD PATRONI_REPLICATION_PASSWORD
exec patroni /etc/patroni/patroni.yml
