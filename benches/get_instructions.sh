#!/usr/bin/env bash
# Instructions executed by one `wxtoken get` on SQLite against `sqlite3 DB 'select 1'`,
# counted by callgrind: unlike wall time, the count does not move with the load of a
# shared machine, so two builds can be compared to the instruction.
#
#   bash benches/get_instructions.sh BIN [OTHER_BIN...]
#
# The database is built with the first binary: 1,000 accounts x 100 hourly tokens (the
# newest valid), every secret encrypted (`key rotate`), the WAL checkpointed. Each binary
# is copied into the scratch directory first, as an installed copy would be. Needs
# valgrind and sqlite3.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BIN [OTHER_BIN...]" >&2; exit 2; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
db=$dir/db.sqlite
i=0
bins=()
for b in "$@"; do
    i=$((i + 1))
    cp "$b" "$dir/wxtoken-$i"
    bins+=("$dir/wxtoken-$i")
done
export HOME=$dir WXTOKEN_DB=$db WXTOKEN_KEY_FILE=$dir/key
echo secret-1 | "${bins[0]}" -q account add --appid wx0000000000000001 >/dev/null 2>&1
now=$(date +%s)
sqlite3 "$db" "
WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
INSERT INTO accounts (id, appid, agent, api, secret, enabled, created_at, updated_at)
  SELECT i, printf('wx%016d', i), '', 'token', 'secret-' || i, 1, $now, $now FROM n;
WITH RECURSIVE h(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM h WHERE j < 99)
INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)
  SELECT a.id, 'access_token', hex(randomblob(68)), 7200,
         $now - (99 - j) * 3600, $now - (99 - j) * 3600 + 7200
  FROM h, accounts a ORDER BY j, a.id;"
"${bins[0]}" -q key rotate 2>/dev/null
sqlite3 "$db" 'PRAGMA wal_checkpoint(TRUNCATE)' >/dev/null

count() {
    env -i WXTOKEN_DB="$db" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" \
        2>&1 >/dev/null | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
base=$(count /usr/bin/sqlite3 "$db" 'select 1')
printf '| side | instructions | vs sqlite3 |\n|---|---|---|\n'
printf "| sqlite3 DB 'select 1' | %s | 1.000x |\n" "$base"
i=0
for b in "${bins[@]}"; do
    i=$((i + 1))
    n=$(count "$b" get --appid wx0000000000000500)
    printf '| wxtoken get (%s) | %s | %sx |\n' "${!i}" "$n" \
        "$(awk -v n="$n" -v b="$base" 'BEGIN { printf "%.3f", n / b }')"
done
