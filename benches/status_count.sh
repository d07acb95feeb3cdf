#!/usr/bin/env bash
# What counting today's fetches costs `status`: the same database, `status` of a baseline
# wxtoken (without the count) against `status` of this one, interleaved, medians.
#
#   bash benches/status_count.sh BASELINE_BIN NEW_BIN [RUNS]
#
# The database: 100 accounts, each with 48 token rows and 30 days of hourly attempts
# (720 rows), what `refresh` keeps after pruning. Needs python3 (its sqlite3 module).
set -euo pipefail

base=${1:?baseline wxtoken binary}
new=${2:?new wxtoken binary}
runs=${3:-30}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/wxtoken-status-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# The baseline creates the schema it knows; the new binary migrates its own copy.
printf 'bench-secret-0000000000000000000\n' |
    WXTOKEN_DB="$tmp/base.db" "$base" -q account add --appid wxbench0000000000
python3 - "$tmp/base.db" <<'EOF'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
now = int(time.time())
db.execute("DELETE FROM accounts")
for i in range(100):
    cur = db.execute(
        "INSERT INTO accounts (appid, agent, api, secret, enabled, created_at, updated_at)"
        " VALUES (?, '', 'token', 'bench-secret-0000000000000000000', 1, ?, ?)",
        (f"wxbench{i:011d}", now, now))
    aid = cur.lastrowid
    db.executemany(
        "INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)"
        " VALUES (?, 'access_token', ?, 7200, ?, ?)",
        [(aid, f"T{aid}-{h}" + "x" * 130, now - h * 3600, now - h * 3600 + 7200)
         for h in range(48)])
    db.executemany(
        "INSERT INTO attempts (account_id, kind, started_at, duration_ms, tries, outcome)"
        " VALUES (?, 'access_token', ?, 40, 1, 'ok')",
        [(aid, now - h * 3600) for h in range(720)])
db.commit()
EOF
cp "$tmp/base.db" "$tmp/new.db"
WXTOKEN_DB="$tmp/new.db" "$new" status >/dev/null # migrates once, outside the timing

# Wall time of one run in microseconds.
time_one() {
    local start end
    start=$(date +%s%N)
    WXTOKEN_DB="$1" "$2" status "${@:3}" >/dev/null
    end=$(date +%s%N)
    echo $(((end - start) / 1000))
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for args in "" "--json"; do
    : >"$tmp/a" && : >"$tmp/b"
    for _ in $(seq "$runs"); do
        # shellcheck disable=SC2086
        time_one "$tmp/base.db" "$base" $args >>"$tmp/a"
        # shellcheck disable=SC2086
        time_one "$tmp/new.db" "$new" $args >>"$tmp/b"
    done
    a=$(median <"$tmp/a")
    b=$(median <"$tmp/b")
    awk -v args="$args" -v a="$a" -v b="$b" -v n="$runs" 'BEGIN {
        printf "status %-6s  baseline %6.2f ms  with the count %6.2f ms  ratio %.3fx  (%d runs each)\n",
            args, a / 1000, b / 1000, b / a, n }'
done
