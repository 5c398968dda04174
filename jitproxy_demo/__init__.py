"""What runs jitproxy locally, beside the runtime package `proxy` (which imports none of it but
`jitproxy demo`'s entry point): the demo (run.py), private MariaDB and PostgreSQL servers
(mariadb.py, postgres.py, process.py), certificates, sample data, the RDS IAM PAM verifier, a
small OIDC provider, and a real proxy run in-process for tests and benchmarks (inprocess.py).
Installed from a source checkout; the container image carries only `proxy`."""
