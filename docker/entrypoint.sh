#!/bin/sh
# jitproxy's container entrypoint (POSIX sh).
#
#   (no arguments) or `serve [FLAGS]`: validate the config with `jitproxy config check`, then
#       `exec jitproxy serve --config "$JITPROXY_CONFIG" [--workers N] [FLAGS]`. exec makes the
#       proxy this process, so `docker stop`'s SIGTERM (and SIGINT) reach it directly and it
#       closes its sessions cleanly. An invalid config stops here, non-zero, with the errors.
#   any other command (`token issue --user dev`, `config check`, `audit verify ...`): run as
#       `jitproxy COMMAND ...`, with the same config (the CLI reads $JITPROXY_CONFIG).
#
# Environment:
#   JITPROXY_CONFIG   the config file (default /etc/jitproxy/config.yaml). Relative paths in it
#                     are resolved against its directory.
#   JITPROXY_WORKERS  serve with `--workers N` (N processes sharing the ports; see the README).
#   NAME_FILE         for any variable NAME starting with JITPROXY_ (e.g.
#                     JITPROXY_STORE_DSN_FILE=/run/secrets/store-dsn): NAME is set to the file's
#                     content (trailing newlines removed), so secrets the config names by
#                     variable (store.dsn_env, upstream.password_env, notify.webhooks[].url_env,
#                     authz.mask_salt_env ...) can come from Docker secrets. Setting both NAME
#                     and NAME_FILE is an error.
#   JITPROXY_EVENT_LOOP=asyncio  use the standard library's event loop instead of uvloop.
set -eu

log() {
  printf 'jitproxy-entrypoint: %s\n' "$*" >&2
}

# NAME_FILE -> NAME. Names are matched against [A-Za-z0-9_] before they are used in eval.
for name in $(env | sed -n 's/^\(JITPROXY_[A-Za-z0-9_]*\)_FILE=.*$/\1/p'); do
  eval "file=\${${name}_FILE:-}"
  [ -n "$file" ] || continue
  if [ "$name" = JITPROXY_CONFIG ]; then
    log "JITPROXY_CONFIG_FILE is not supported: set JITPROXY_CONFIG to the config file's path"
    exit 64
  fi
  eval "current=\${${name}:-}"
  if [ -n "$current" ]; then
    log "both $name and ${name}_FILE are set: set only one of them"
    exit 64
  fi
  if [ ! -r "$file" ]; then
    log "${name}_FILE: cannot read $file (is the secret mounted, and readable by uid $(id -u)?)"
    exit 66
  fi
  # shellcheck disable=SC2034  # read by the eval below
  value=$(cat "$file")
  eval "export ${name}=\"\$value\""
  unset "${name}_FILE"
done
unset name file current value

JITPROXY_CONFIG=${JITPROXY_CONFIG:-/etc/jitproxy/config.yaml}
export JITPROXY_CONFIG

# No arguments, or flags only: serve.
if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- serve "$@"
fi
if [ "$1" != serve ]; then
  exec jitproxy "$@"
fi
shift

if [ ! -f "$JITPROXY_CONFIG" ]; then
  log "no config file at $JITPROXY_CONFIG: mount one there (docker run -v \"\$PWD/config.yaml:$JITPROXY_CONFIG:ro\" ...) or set JITPROXY_CONFIG"
  exit 2
fi

status=0
jitproxy config check --config "$JITPROXY_CONFIG" || status=$?
if [ "$status" -ne 0 ]; then
  log "$JITPROXY_CONFIG did not pass 'jitproxy config check' (exit $status; its errors are above): not starting"
  exit "$status"
fi

if [ -n "${JITPROXY_WORKERS:-}" ]; then
  set -- --workers "$JITPROXY_WORKERS" "$@"
fi
exec jitproxy serve --config "$JITPROXY_CONFIG" "$@"
