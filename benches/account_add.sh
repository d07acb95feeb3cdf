#!/usr/bin/env bash
# What one `account add` costs as the store grows (issue 24): the time to add one account
# to a store of SMALL accounts and to one of LARGE accounts, for a baseline wxtoken and
# this one, interleaved, medians of RUNS adds each.
#
#   bash benches/account_add.sh BASELINE_BIN NEW_BIN [SMALL] [LARGE] [RUNS]
#
# Each store: one account added by wxtoken (the schema, the key file), the others
# inserted in plain text with python3's sqlite3, then encrypted by one more add (the
# upgrade path encrypts every plaintext secret): every stored secret is sealed with its
# own account's binding, as adds would have left them. Needs python3.
set -euo pipefail

base=${1:?baseline wxtoken binary}
new=${2:?new wxtoken binary}
small=${3:-1000}
large=${4:-20000}
runs=${5:-7}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/wxtoken-add-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# build BIN NAME N: a store of N accounts at $tmp/NAME.db, key file $tmp/NAME.key.
build() {
    local bin=$1 name=$2 n=$3
    export WXTOKEN_DB="$tmp/$name.db" WXTOKEN_KEY_FILE="$tmp/$name.key"
    printf 'bench-secret-0000000000000000000\n' | "$bin" -q account add --appid wxbench00000000000
    python3 - "$WXTOKEN_DB" "$n" <<'EOF'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
now = int(time.time())
db.executemany(
    "INSERT INTO accounts (appid, agent, api, secret, enabled, created_at, updated_at)"
    " VALUES (?, '', 'token', 'bench-secret-0000000000000000000', 1, ?, ?)",
    ((f"wxbench{i:011d}", now, now) for i in range(1, int(sys.argv[2]) - 1)))
db.commit()
EOF
    printf 'bench-secret-0000000000000000000\n' | "$bin" -q account add --appid wxbenchlast0000000
    unset WXTOKEN_DB WXTOKEN_KEY_FILE
}

# add_ms BIN NAME I: milliseconds for one `account add` of a new account to NAME.
add_ms() {
    local bin=$1 name=$2 i=$3 start end
    start=$(date +%s%N)
    printf 'bench-secret-0000000000000000000\n' |
        WXTOKEN_DB="$tmp/$name.db" WXTOKEN_KEY_FILE="$tmp/$name.key" \
            "$bin" -q account add --appid "wxadd$(printf '%013d' "$i")"
    end=$(date +%s%N)
    echo $(((end - start) / 1000000))
}

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

for side in base new; do
    bin=${!side}
    # The key file's creation and the encryption of the plaintext rows say so on stderr.
    build "$bin" "$side-small" "$small" 2>>"$tmp/build.log"
    build "$bin" "$side-large" "$large" 2>>"$tmp/build.log"
done

declare -A times
for ((r = 0; r < runs; r++)); do
    for side in base new; do
        bin=${!side}
        for size in small large; do
            times[$side-$size]+="$(add_ms "$bin" "$side-$size" "$r") "
        done
    done
done

printf '%-10s %12s %12s %8s\n' side "ms at $small" "ms at $large" ratio
for side in base new; do
    s=$(tr ' ' '\n' <<<"${times[$side-small]}" | grep . | median)
    l=$(tr ' ' '\n' <<<"${times[$side-large]}" | grep . | median)
    printf '%-10s %12s %12s %8s\n' "$side" "$s" "$l" "$(awk -v s="$s" -v l="$l" 'BEGIN {printf "%.2f", l / (s ? s : 1)}')"
done
