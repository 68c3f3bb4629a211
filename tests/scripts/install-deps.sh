#!/usr/bin/env bash
# Installs what binlake's demo, tests and benchmarks need and is missing: MariaDB server and client,
# sysbench, curl and percona-toolkit (Debian), a Rust toolchain check, and the Python readers/peers, the chdb
# engine behind the ClickHouse test front and dbt-duckdb (PyPI). Idempotent.
set -euo pipefail
need_apt=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || need_apt+=(mariadb-client)
command -v mariadb-binlog >/dev/null 2>&1 || need_apt+=(mariadb-client)
command -v sysbench >/dev/null 2>&1 || need_apt+=(sysbench)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# pt-online-schema-change, for the online schema change tests
command -v pt-online-schema-change >/dev/null 2>&1 || need_apt+=(percona-toolkit)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# mariadb-server's postinst may start a system server; binlake's tests never use it.
py_missing=()
python3 -c 'import pyarrow' 2>/dev/null || py_missing+=(pyarrow)
python3 -c 'import duckdb' 2>/dev/null || py_missing+=(duckdb)
python3 -c 'import pytz' 2>/dev/null || py_missing+=(pytz)
python3 -c 'import deltalake' 2>/dev/null || py_missing+=(deltalake)
python3 -c 'import pymysqlreplication' 2>/dev/null || py_missing+=(mysql-replication)
python3 -c 'import moto, flask' 2>/dev/null || py_missing+=('moto[server]')
python3 -c 'import chdb' 2>/dev/null || py_missing+=(chdb)
python3 -c 'import lz4.block' 2>/dev/null || py_missing+=(lz4)
# dbt for the dbt example's test. dbt-core 1.11+ fetches a parser wheel from GitHub at install
# time, which only PyPI-reachable machines cannot do: 1.10 installs from PyPI alone.
python3 -c 'import dbt.adapters.duckdb' 2>/dev/null || py_missing+=('dbt-core>=1.10,<1.11' 'dbt-duckdb>=1.9,<1.11')
if [ ${#py_missing[@]} -gt 0 ]; then
  echo "installing Python packages: ${py_missing[*]}" >&2
  python3 -m pip install -q "${py_missing[@]}" 2>&1 | grep -v "Running pip as the 'root' user" || true
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
