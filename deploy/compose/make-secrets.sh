#!/bin/sh
# Makes what deploy/compose/compose.yaml and ha.yaml read from ./secrets:
# a private CA and the certificates it signs, the vault's passphrase and
# master key, and the PostgreSQL passwords. For evaluation: a real deployment
# takes certificates from its own CA and secrets from its secret store.
#
# Docker Compose bind-mounts a secret file as it is on the host (the `uid`,
# `gid` and `mode` of a secret are not applied to files), and `phivault
# serve` refuses a passphrase, key or password file that group or others can
# read. So each file is given, mode 0400, to the one container user that
# reads it: 10001 (the phivault image) or 999 (postgres in the image built
# from patroni/Dockerfile). Changing owners needs root: run it with sudo.
set -eu

VAULT_UID=10001
POSTGRES_UID=999
DAYS=${DAYS:-90}
dir=$(dirname "$0")/secrets

if [ "$(id -u)" != 0 ]; then
    echo "run as root (sudo $0): the files are given to the container users that read them" >&2
    exit 1
fi
if [ -e "$dir" ]; then
    echo "$dir exists: nothing written (remove it to start again)" >&2
    exit 1
fi
umask 077
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A file for one user: mode 0400, owned by the container user given.
private() {
    chown "$1:$1" "$2"
    chmod 0400 "$2"
}

openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc \
    -days "$DAYS" -subj "/CN=phivault evaluation CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$work/ca.key" -out "$dir/ca.pem" 2>/dev/null
chmod 0444 "$dir/ca.pem"

# certificate NAME SUBJECT_ALT_NAMES: NAME.pem and NAME.key, signed by the CA.
certificate() {
    cat >"$work/$1.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$2
EXT
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc \
        -subj "/CN=$1" -keyout "$dir/$1.key" -out "$work/$1.csr" 2>/dev/null
    openssl x509 -req -in "$work/$1.csr" -CA "$dir/ca.pem" -CAkey "$work/ca.key" \
        -CAcreateserial -days "$DAYS" -extfile "$work/$1.ext" -out "$dir/$1.pem" 2>/dev/null
    chmod 0444 "$dir/$1.pem"
}

# Every name a client may use for a vault node of either file.
certificate phivault "DNS:localhost,IP:127.0.0.1,DNS:phivault,DNS:vault-a,DNS:vault-b"
private "$VAULT_UID" "$dir/phivault.key"
# One certificate for the three members: the vault verifies whichever leads.
certificate postgres "DNS:pg1,DNS:pg2,DNS:pg3"
private "$POSTGRES_UID" "$dir/postgres.key"
rm -f "$dir/ca.srl"

openssl rand -base64 32 >"$dir/passphrase"
private "$VAULT_UID" "$dir/passphrase"
openssl rand -hex 32 >"$dir/master.key"
private "$VAULT_UID" "$dir/master.key"

# The vault's database password, once for each side that reads it.
password=$(openssl rand -base64 24)
printf '%s\n' "$password" >"$dir/store-password"
private "$VAULT_UID" "$dir/store-password"
printf '%s\n' "$password" >"$dir/postgres-phivault-password"
private "$POSTGRES_UID" "$dir/postgres-phivault-password"
for role in superuser replication; do
    openssl rand -base64 24 >"$dir/postgres-$role-password"
    private "$POSTGRES_UID" "$dir/postgres-$role-password"
done

# The CA's key lived in the temporary directory only and goes with it:
# nobody can issue another certificate this deployment would trust.
# The directory is traversable, so that a user can reach ca.pem (0444);
# every secret in it is 0400 for its own reader.
chmod 0755 "$dir"
echo "secrets written to $dir; clients trust $dir/ca.pem"
