#!/bin/sh
# Writes what docker-compose.yaml mounts and the repository never carries (needs openssl >= 1.1.1):
#
#   docker/certs/    public, mounted read-only into the containers
#     ca.pem               a local CA; clients verify the proxy with it (--ssl-ca=docker/certs/ca.pem)
#     jitproxy.pem         the proxy's certificate (MySQL listener and admin API):
#                          localhost, 127.0.0.1, ::1 and the service name jitproxy
#     mariadb.pem          MariaDB's certificate, for the name mariadb (the proxy checks it)
#     token-signing.pub    verifies personal tokens (identity.issuers[].public_key_file)
#   docker/secrets/  private; compose hands each file to the services that need it (/run/secrets/)
#     jitproxy-key.pem, mariadb-key.pem   the two certificates' keys
#     token-signing.key    signs personal tokens (`jitproxy token issue`)
#     upstream-password    the shared MariaDB account jitproxy@'%' (created at MariaDB's first start)
#     mariadb-root-password
#     store-password       PostgreSQL's jitproxy role; store-dsn is the proxy's DSN with it
#     ca-key.pem           the CA's key: mounted nowhere; keep it to sign new certificates
#
#   sh docker/gen-secrets.sh [--force] [DIR]     (DIR: default docker/, beside this script)
#
# Nothing is overwritten unless --force (then everything is new: the database volumes keep the
# old passwords, so also run `docker compose down -v` to start the databases afresh).
# Own certificates instead: put them at the same paths (docker/certs/ca.pem must be the CA that
# signed jitproxy.pem and mariadb.pem).
#
# Permissions: docker/secrets/ is 0700, so other users of this machine cannot open anything in
# it; the files inside are 0644 because compose bind-mounts them as they are, and the containers'
# unprivileged users (uid 10001 for jitproxy, mysql for MariaDB) must read them. ca-key.pem is 0600.
set -eu

force=0
if [ "${1:-}" = --force ]; then
  force=1
  shift
fi
out=${1:-$(cd "$(dirname "$0")" && pwd)}
certs=$out/certs
secrets=$out/secrets

if [ -e "$secrets/ca-key.pem" ] && [ "$force" -eq 0 ]; then
  echo "gen-secrets: $secrets already holds keys; keeping them (--force makes new ones)"
  exit 0
fi
command -v openssl >/dev/null 2>&1 || { echo "gen-secrets: openssl is needed" >&2; exit 1; }

umask 077
mkdir -p "$certs" "$secrets"
chmod 0755 "$certs"
chmod 0700 "$secrets"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

cat >"$tmp/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = jitproxy
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = $ENV::SAN
EOF

ec_key() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

# server_cert NAME CN SAN: $certs/NAME.pem signed by the CA, its key in $secrets/NAME-key.pem
# (openssl reads $SAN while loading openssl.cnf, so it is set for every command that loads it.)
server_cert() {
  SAN=$3
  export SAN
  ec_key "$secrets/$1-key.pem"
  openssl req -new -config "$tmp/openssl.cnf" -key "$secrets/$1-key.pem" -subj "/CN=$2" -out "$tmp/$1.csr"
  openssl x509 -req -in "$tmp/$1.csr" -CA "$certs/ca.pem" -CAkey "$secrets/ca-key.pem" \
    -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 \
    -extfile "$tmp/openssl.cnf" -extensions server -out "$certs/$1.pem" 2>/dev/null
}

ec_key "$secrets/ca-key.pem"
SAN=DNS:unused
export SAN
openssl req -x509 -new -config "$tmp/openssl.cnf" -key "$secrets/ca-key.pem" \
  -subj "/CN=jitproxy local CA" -days 3650 -sha256 -extensions ca -out "$certs/ca.pem"
server_cert jitproxy jitproxy "DNS:localhost,IP:127.0.0.1,IP:::1,DNS:jitproxy"
server_cert mariadb mariadb "DNS:mariadb"

openssl genpkey -algorithm ed25519 -out "$secrets/token-signing.key"
openssl pkey -in "$secrets/token-signing.key" -pubout -out "$certs/token-signing.pub"

# Hex: safe in a DSN and in SQL without quoting rules.
openssl rand -hex 24 >"$secrets/upstream-password"
openssl rand -hex 24 >"$secrets/mariadb-root-password"
store_password=$(openssl rand -hex 24)
printf '%s\n' "$store_password" >"$secrets/store-password"
printf 'postgresql://jitproxy:%s@postgres:5432/jitproxy\n' "$store_password" >"$secrets/store-dsn"

chmod 0644 "$certs"/*.pem "$certs/token-signing.pub"
chmod 0644 "$secrets"/*
chmod 0600 "$secrets/ca-key.pem"
echo "gen-secrets: wrote $certs/ (public) and $secrets/ (private)"
