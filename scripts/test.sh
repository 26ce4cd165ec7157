#!/usr/bin/env bash
# Install every test dependency on Debian 12 and run the whole suite, `ruff check .` and
# `mypy mailsrv exporters backup dashboards`. Run as root from anywhere; extra arguments go to pytest:
#   bash scripts/test.sh                  # everything
#   bash scripts/test.sh -k seed -x       # a subset
# Environment: VENV (default: <repo>/.venv), PYTHON (interpreter for the venv, >= 3.11),
#   PYTEST_WORKERS (default 2; 0 = no xdist), SKIP_APT=1 (do not touch system packages).
# Exit status: 0 when all three pass; otherwise the first failing step's status (1 if pytest collected nothing).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
WORKERS="${PYTEST_WORKERS:-2}"
# promtool comes with prometheus, mbsync with isync, systemd-analyze with systemd; the Cyrus testbed installs its own packages when started.
APT_PACKAGES=(python3 python3-venv python3-pip ca-certificates curl openssl util-linux systemd prometheus prometheus-alertmanager restic isync)

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

install_system_packages() {
  [ "${SKIP_APT:-0}" = 1 ] && { say "skipping apt (SKIP_APT=1)"; return; }
  command -v apt-get >/dev/null || die "apt-get not found: this script sets up Debian 12; set SKIP_APT=1 if the tools are installed"
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then say "system packages already installed"; return; fi
  [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root (or install them yourself and set SKIP_APT=1)"
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -q || die "apt-get update failed"
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" || die "apt-get install failed"
}

pick_python() {
  local candidates=("${PYTHON:-}" python3 /usr/bin/python3) py
  for py in "${candidates[@]}"; do
    [ -n "$py" ] || continue
    command -v "$py" >/dev/null || continue
    if "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"; return
    fi
  done
  die "no Python >= 3.11 with venv/ensurepip found (Debian: apt-get install python3 python3-venv)"
}

install_python_packages() {
  if [ ! -x "$VENV/bin/python" ]; then
    local py; py="$(pick_python)" || exit 1
    say "creating $VENV with $py ($("$py" -V 2>&1))"
    "$py" -m venv "$VENV" || die "could not create the virtualenv $VENV"
  fi
  local stamp="$VENV/.mailsidecar-test-deps" want
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "Python packages up to date in $VENV"
  else
    say "pip install -e '.[test]' into $VENV"
    "$VENV/bin/python" -m pip install -q -e "${ROOT}[test]" || die "pip install failed"
    echo "$want" > "$stamp"
  fi
}

run_checks() {
  cd "$ROOT" || die "cannot cd to $ROOT"
  export PATH="$VENV/bin:$PATH"
  local xdist=() status=0 rc
  [ "$WORKERS" != 0 ] && xdist=(-n "$WORKERS")

  say "pytest ${xdist[*]} $*"
  python -m pytest "${xdist[@]}" "$@"
  rc=$?
  if [ $rc -eq 5 ]; then
    echo "test.sh: pytest collected no tests (exit 5); counting that as a failure" >&2
    rc=1
  fi
  [ $rc -ne 0 ] && status=$rc

  say "ruff check ."
  ruff check .; rc=$?
  [ $rc -ne 0 ] && [ $status -eq 0 ] && status=$rc

  say "mypy mailsrv exporters backup dashboards"
  mypy mailsrv exporters backup dashboards; rc=$?
  [ $rc -ne 0 ] && [ $status -eq 0 ] && status=$rc

  if [ $status -eq 0 ]; then say "all checks passed"; else say "FAILED (exit $status)"; fi
  return $status
}

install_system_packages
install_python_packages
run_checks "$@"
exit $?
