# Creates the one account jitproxy reaches MariaDB as (the "shared DB identity"): ALL on the
# sample databases (10-sample-data.sql, which runs first), nothing else, TLS required.
#
# Sourced (not run: keep this file non-executable) by the mariadb image's entrypoint, once, when
# it initialises an empty data directory; docker_process_sql and docker_sql_escape_string_literal
# are that entrypoint's functions. The password is the secret the proxy reads too
# (upstream.password_file in docker/jitproxy.yaml).
#
# Environment (docker-compose.yaml sets them):
#   JITPROXY_UPSTREAM_PASSWORD_FILE  the password file (default /run/secrets/upstream-password)
#   JITPROXY_UPSTREAM_USER           the account (default jitproxy)
#   JITPROXY_SAMPLE_DATABASES        what it may use (default "hr_prod hr_test")

jitproxy_init_password_file=${JITPROXY_UPSTREAM_PASSWORD_FILE:-/run/secrets/upstream-password}
if [ ! -r "$jitproxy_init_password_file" ]; then
  echo "20-jitproxy-user.sh: cannot read $jitproxy_init_password_file (run docker/gen-secrets.sh first)" >&2
  exit 1
fi
jitproxy_init_user=$(docker_sql_escape_string_literal "${JITPROXY_UPSTREAM_USER:-jitproxy}")
jitproxy_init_password=$(docker_sql_escape_string_literal "$(cat "$jitproxy_init_password_file")")
{
  echo "CREATE USER '$jitproxy_init_user'@'%' IDENTIFIED BY '$jitproxy_init_password' REQUIRE SSL;"
  for jitproxy_init_db in ${JITPROXY_SAMPLE_DATABASES:-hr_prod hr_test}; do
    echo "GRANT ALL PRIVILEGES ON \`$jitproxy_init_db\`.* TO '$jitproxy_init_user'@'%';"
  done
} | docker_process_sql
unset jitproxy_init_password_file jitproxy_init_user jitproxy_init_password jitproxy_init_db
