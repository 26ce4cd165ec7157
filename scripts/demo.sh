#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a running mailsidecar demo on the embedded mail server:
# install, configure, start mailsrv, create accounts and fill them with realistic mail, export every account
# over JMAP, ship the export to a local restic repository, restore alice from that snapshot into a fresh
# account (carol) with verification, start mail-exporter and print live lines of its /metrics.
#   bash scripts/demo.sh           # set up (again) and start; safe to re-run
#   bash scripts/demo.sh status    # is it running?
#   bash scripts/demo.sh stop      # stop the demo server and exporter (data stays in .demo/)
# Everything lives in the repository: the virtualenv in .venv/, config, secrets, data and log in .demo/.
# Environment: DEMO_DIR, VENV, PYTHON (>= 3.11), DEMO_COUNT (messages per account, default 500),
#   DEMO_HTTP_PORT (8080), DEMO_SMTP_PORT (2525), DEMO_SUBMISSION_PORT (2587), DEMO_METRICS_PORT (9925),
#   SKIP_APT=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO_DIR="${DEMO_DIR:-$ROOT/.demo}"
VENV="${VENV:-$ROOT/.venv}"
COUNT="${DEMO_COUNT:-500}"
HTTP_PORT="${DEMO_HTTP_PORT:-8080}"
SMTP_PORT="${DEMO_SMTP_PORT:-2525}"
SUBMISSION_PORT="${DEMO_SUBMISSION_PORT:-2587}"
METRICS_PORT="${DEMO_METRICS_PORT:-9925}"
ACCOUNTS=(alice bob)
RESTORE_INTO=carol   # a fresh, empty account that receives alice's mail from the snapshot
DOMAIN=example.org
CONFIG="$DEMO_DIR/config.toml"
PIDFILE="$DEMO_DIR/mailsrv.pid"
LOG="$DEMO_DIR/mailsrv.log"
EXPORTER_PIDFILE="$DEMO_DIR/mail-exporter.pid"
EXPORTER_LOG="$DEMO_DIR/mail-exporter.log"
APT_PACKAGES=(python3 python3-venv python3-pip ca-certificates restic)

# The main job, in order.
STEPS=(install_system install_project write_config start_mailsrv create_accounts seed_mail
       export_accounts ship_export restore_account start_exporter show_metrics)

say() { printf '==> %s\n' "$*"; }
die() { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }
mailsrv() { "$VENV/bin/mailsrv" --config "$CONFIG" "$@"; }
mail_backup() { "$VENV/bin/mail-backup" --config "$CONFIG" "$@"; }

# -- steps ------------------------------------------------------------------------------------------
install_system() {
  [ "${SKIP_APT:-0}" = 1 ] && return
  command -v apt-get >/dev/null || { say "no apt-get: assuming Python >= 3.11 with venv is installed"; return; }
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root (or install them and set SKIP_APT=1)"
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -q
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
}

pick_python() {
  local py
  for py in "${PYTHON:-}" python3 /usr/bin/python3; do
    { [ -n "$py" ] && command -v "$py" >/dev/null; } || continue
    "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo "$py"; return; }
  done
  die "no Python >= 3.11 with venv found (Debian: apt-get install python3 python3-venv)"
}

install_project() {
  if [ ! -x "$VENV/bin/python" ]; then
    local py; py="$(pick_python)" || exit 1
    say "creating $VENV with $("$py" -V 2>&1)"
    "$py" -m venv "$VENV"
  fi
  local stamp="$VENV/.mailsidecar-deps" want
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
  if [ -x "$VENV/bin/mailsrv" ] && [ -f "$stamp" ] && [ "$(cut -d' ' -f1 "$stamp")" = "$want" ]; then return; fi
  say "installing mailsidecar into $VENV"
  "$VENV/bin/python" -m pip install -q -e "$ROOT"
  echo "$want base" > "$stamp"
}

secret() {  # secret NAME: create DEMO_DIR/secrets/NAME with a random password once
  local f="$DEMO_DIR/secrets/$1"
  [ -s "$f" ] || (umask 077 && "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(15))' > "$f")
}

write_config() {
  mkdir -p "$DEMO_DIR/secrets" && chmod 700 "$DEMO_DIR/secrets"
  secret admin
  secret restic
  local a; for a in "${ACCOUNTS[@]}" "$RESTORE_INTO"; do secret "$a"; done
  cat > "$CONFIG" <<EOF
# mailsidecar demo (written by scripts/demo.sh; rewritten on every run)
[server]
profile = "embedded"
url = "http://127.0.0.1:$HTTP_PORT"
admin_user = "admin"
admin_password_file = "$DEMO_DIR/secrets/admin"

[export]
dir = "$DEMO_DIR/export"

[state]
dir = "$DEMO_DIR/state"

[[targets]]
name = "local"
type = "restic"
repository = "$DEMO_DIR/restic"
password_file = "$DEMO_DIR/secrets/restic"
init = true
keep = { daily = 7, weekly = 4, monthly = 12 }

[exporter]
listen = "127.0.0.1:$METRICS_PORT"
sources = ["mailserver", "queue", "backups", "tls"]
tls_endpoints = ["smtp://127.0.0.1:$SUBMISSION_PORT"]

[mailsrv]
data_dir = "$DEMO_DIR/data"
hostname = "mail.$DOMAIN"
domains = ["$DOMAIN"]
smtp_listen = "127.0.0.1:$SMTP_PORT"
submission_listen = "127.0.0.1:$SUBMISSION_PORT"
http_listen = "127.0.0.1:$HTTP_PORT"
admin_user = "admin"
admin_password_file = "$DEMO_DIR/secrets/admin"
EOF
}

running_pid() {  # running_pid [PIDFILE]: the pid of our demo server (or exporter), if it runs
  local pidfile="${1:-$PIDFILE}"
  [ -f "$pidfile" ] || return 1
  local pid; pid="$(cat "$pidfile")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$CONFIG" || return 1
  echo "$pid"
}

stop_daemon() {  # stop_daemon NAME PIDFILE
  local pid
  if pid="$(running_pid "$2")"; then
    say "stopping $1 (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$2"
}

start_daemon() {  # start_daemon NAME PIDFILE LOG READY_URL: start `NAME --config CONFIG serve`, wait until READY_URL answers
  local name="$1" pidfile="$2" log="$3" url="$4"
  say "starting $name (log: $log)"
  setsid nohup "$VENV/bin/$name" --config "$CONFIG" serve >> "$log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  for _ in $(seq 300); do
    "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('$url', timeout=1)" 2>/dev/null && return
    running_pid "$pidfile" >/dev/null || { tail -n 20 "$log" >&2; die "$name exited; see $log"; }
    sleep 0.1
  done
  die "$name did not answer $url within 30 s; see $log"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop_mailsrv() { stop_daemon mailsrv "$PIDFILE"; }

start_mailsrv() {
  stop_mailsrv  # a re-run restarts the server so it runs the current code and config
  local port
  for port in "$HTTP_PORT" "$SMTP_PORT" "$SUBMISSION_PORT"; do
    port_busy "$port" && die "port $port on 127.0.0.1 is in use; pick others with DEMO_HTTP_PORT, DEMO_SMTP_PORT, DEMO_SUBMISSION_PORT"
  done
  start_daemon mailsrv "$PIDFILE" "$LOG" "http://127.0.0.1:$HTTP_PORT/healthz/ready"
}

create_accounts() {
  local existing a
  existing="$(mailsrv account list --json)"
  for a in "${ACCOUNTS[@]}" "$RESTORE_INTO"; do
    grep -q "\"name\": \"$a\"" <<<"$existing" && continue
    mailsrv account add "$a" --password-file "$DEMO_DIR/secrets/$a"
  done
}

seed_mail() {
  local a
  for a in "${ACCOUNTS[@]}"; do
    [ -f "$DEMO_DIR/data/.seeded-$a" ] && continue
    say "seeding $COUNT messages into $a"
    mailsrv seed --account "$a" --count "$COUNT" --random-seed 1
    touch "$DEMO_DIR/data/.seeded-$a"
  done
}

export_accounts() {
  say "mail-backup export: every account over JMAP into $DEMO_DIR/export"
  mail_backup export
}

ship_export() {
  say "mail-backup ship: the export as a snapshot in the local restic repository $DEMO_DIR/restic"
  mail_backup ship
  mail_backup snapshots --target local
}

restore_account() {
  say "mail-backup restore: alice from the newest snapshot into the fresh account $RESTORE_INTO (a rerun adds no duplicates)"
  mail_backup restore --account alice --target local --snapshot latest --into "$RESTORE_INTO" --objects mail,sieve,vacation
}

stop_exporter() { stop_daemon mail-exporter "$EXPORTER_PIDFILE"; }

start_exporter() {
  stop_exporter
  port_busy "$METRICS_PORT" && die "port $METRICS_PORT on 127.0.0.1 is in use; pick another with DEMO_METRICS_PORT"
  start_daemon mail-exporter "$EXPORTER_PIDFILE" "$EXPORTER_LOG" "http://127.0.0.1:$METRICS_PORT/healthz"
}

show_metrics() {
  say "a few live lines of http://127.0.0.1:$METRICS_PORT/metrics"
  "$VENV/bin/python" - "$METRICS_PORT" <<'PY'
import sys, time, urllib.request
wanted = ("mail_exporter_source_up", "mail_auth_attempts_total", "mail_queue_messages", "mail_backup_last_success_timestamp_seconds",
          "mail_backup_last_messages", "mail_backup_snapshots", "mail_tls_certificate_expiry_timestamp_seconds")
url = f"http://127.0.0.1:{sys.argv[1]}/metrics"
for _ in range(50):  # the first background polls finish within a few seconds of start-up
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    if 'source="backups"} 1' in text and 'source="mailserver"} 1' in text:
        break
    time.sleep(0.2)
lines = [line for line in text.splitlines() if line.startswith(wanted)]
print("\n".join(lines[:24]) or text[:2000])
PY
}

summary() {
  local d="${DEMO_DIR#"$PWD"/}" v="${VENV#"$PWD"/}" a
  cat <<EOF

mailsidecar demo is running: mailsrv pid $(running_pid), log $d/mailsrv.log, config $d/config.toml
  JMAP session     http://127.0.0.1:$HTTP_PORT/.well-known/jmap
  SMTP (inbound)   127.0.0.1:$SMTP_PORT   mail for @$DOMAIN, no login
  submission       127.0.0.1:$SUBMISSION_PORT   STARTTLS + AUTH; self-signed certificate $d/data/tls/cert.pem
  mail-exporter    http://127.0.0.1:$METRICS_PORT/metrics   pid $(running_pid "$EXPORTER_PIDFILE"), log $d/mail-exporter.log
  server metrics   http://127.0.0.1:$HTTP_PORT/metrics/prometheus
  export           $d/export   (mail-backup verify; mail-backup maildir --account alice DEST)
  restic repo      $d/restic   password in $d/secrets/restic
  management API   http://127.0.0.1:$HTTP_PORT/api   login admin, password in $d/secrets/admin
EOF
  for a in "${ACCOUNTS[@]}"; do
    printf '  account          %-20s login %s, password in %s\n' "$a@$DOMAIN" "$a" "$d/secrets/$a"
  done
  cat <<EOF

Try:
  curl -su alice:"\$(cat $d/secrets/alice)" http://127.0.0.1:$HTTP_PORT/jmap/session
  $v/bin/mailsrv --config $d/config.toml account list
  $v/bin/mail-backup --config $d/config.toml run            # the nightly job: export, ship, prune
  $v/bin/mail-backup --config $d/config.toml restore --account bob --target local --dry-run
Stop:   bash scripts/demo.sh stop        (start again: bash scripts/demo.sh)
EOF
}

# -- main -------------------------------------------------------------------------------------------
case "${1:-up}" in
  up)
    mkdir -p "$DEMO_DIR"
    for step in "${STEPS[@]}"; do "$step"; done
    summary ;;
  stop) stop_exporter; stop_mailsrv; say "stopped" ;;
  status)
    if pid="$(running_pid)"; then say "mailsrv is running (pid $pid)"; else say "mailsrv is not running"; exit 3; fi ;;
  -h|--help|help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command '$1' (up | status | stop)" ;;
esac
