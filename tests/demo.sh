#!/usr/bin/env bash
# wxtoken's main job, end to end, on loopback: add two accounts, refresh, status, get.
#
#   bash tests/demo.sh
#
# WeChat is replaced by the stand-in crate in tests/standin/ (127.0.0.1 only), and the
# database lives in a temp directory that is deleted at the end. No WeChat credentials,
# no internet (apart from cargo fetching crates on a first build), nothing left running.
# Every wxtoken command is printed with a leading "+" before it runs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# One stream, so that the commands and their output stay in order when piped to a pager.
exec 2>&1

say() { printf '\n# %s\n' "$*"; }
# Prints a command, then runs it.
run() {
    printf '+ %s\n' "$*"
    "$@"
}
die() {
    printf 'demo failed: %s\n' "$*"
    exit 1
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/wxtoken-demo.XXXXXX")
standin_pid=
cleanup() {
    if [[ -n $standin_pid ]]; then
        kill "$standin_pid" 2>/dev/null || true
        wait "$standin_pid" 2>/dev/null || true
    fi
    exec 3>&- || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "Building wxtoken and the WeChat stand-in"
printf '+ %s\n' "cargo build --quiet --workspace --bin wxtoken --bin standin"
# Compiler warnings are for developers (CI denies them); show cargo's output only on failure.
if ! cargo build --quiet --workspace --bin wxtoken --bin standin 2>"$tmp/build.log"; then
    cat "$tmp/build.log"
    die "cargo build failed"
fi
# The target directory, wherever CARGO_TARGET_DIR or a cargo config puts it.
target=$(cargo metadata --no-deps --format-version 1 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p') || true
bin="${target:-target}/debug"
[[ -x $bin/wxtoken && -x $bin/standin ]] || die "no binaries in $bin"
PATH="$bin:$PATH"
export PATH

# The stand-in reads its stdin from a FIFO that this script holds open on fd 3, and exits
# when that closes. So it ends with this script even if the script is killed with SIGKILL
# and the trap never runs.
mkfifo "$tmp/standin.stdin"
"$bin/standin" --port 0 --exit-on-stdin-eof \
    <"$tmp/standin.stdin" >"$tmp/standin.url" &
standin_pid=$!
exec 3>"$tmp/standin.stdin"
# Children must not inherit fd 3, or they would keep the stand-in alive after the script.
wxtoken() { command wxtoken "$@" 3>&-; }

api_base=
for _ in $(seq 100); do
    if [[ -s $tmp/standin.url ]] && [[ $(wc -l <"$tmp/standin.url") -ge 1 ]]; then
        IFS= read -r api_base <"$tmp/standin.url"
        break
    fi
    kill -0 "$standin_pid" 2>/dev/null || die "the stand-in exited before printing its URL"
    sleep 0.1 3>&-
done
[[ $api_base == http://127.0.0.1:* ]] || die "the stand-in printed no loopback URL (got '$api_base')"

say "The stand-in for WeChat's API listens on $api_base"
say "Point wxtoken at a fresh database and at the stand-in. Without these variables the"
printf '# %s\n' "database is ~/.local/share/wxtoken/wxtoken.db and the API https://api.weixin.qq.com."
unset RUST_LOG
# wxtoken honours HTTPS_PROXY and friends, as production behind a proxy needs; the
# stand-in is on loopback, so keep a proxy set in this shell out of the way.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
export WXTOKEN_DB="$tmp/wxtoken.db"
# The key file that encrypts the secrets; without this it would be ~/.config/wxtoken/key.
export WXTOKEN_KEY_FILE="$tmp/wxtoken.key"
export WXTOKEN_API_BASE="$api_base"
export WXTOKEN_WORK_API_BASE="$api_base"
printf '+ export WXTOKEN_DB=%s\n' "$WXTOKEN_DB"
printf '+ export WXTOKEN_KEY_FILE=%s\n' "$WXTOKEN_KEY_FILE"
printf '+ export WXTOKEN_API_BASE=%s\n' "$WXTOKEN_API_BASE"

# Made-up credentials: the stand-in accepts any appid and secret.
appid_classic=wx0123456789abcdef
appid_stable=wxfedcba9876543210
secret_classic=demo0secret0for0the0stand0in0001
secret_stable=demo0secret0for0the0stand0in0002

say "Add two accounts. The secret comes from stdin (or --secret-env VAR), never from argv,"
printf '# %s\n' "where ps and shell history would show it. Typed at a terminal, it is prompted without echo."
printf '+ %s\n' "printf '%s\\n' \"\$SECRET\" | wxtoken account add --appid $appid_classic --api token"
printf '%s\n' "$secret_classic" | wxtoken account add --appid "$appid_classic" --api token
printf '+ %s\n' "printf '%s\\n' \"\$SECRET\" | wxtoken account add --appid $appid_stable --api stable"
printf '%s\n' "$secret_stable" | wxtoken account add --appid "$appid_stable" --api stable
run wxtoken account list

say "Fetch a token for every enabled account: this is what cron runs every hour"
run wxtoken refresh

say "Again: a token under a minute old is left alone, so an extra run costs no quota"
run wxtoken refresh

say "What cron runs: with -q, nothing is printed unless an account failed"
run wxtoken -q refresh

say "Each account's API, the age of its newest token and the outcome of its last attempt"
run wxtoken status

say "WeChat's count of today's token fetches, next to wxtoken's own: when WeChat counts"
printf '# %s\n' "clearly more, another program fetches tokens for the appid (and causes 40001)"
run wxtoken quota

say "Shell scripts take the token from stdout; a non-zero exit means there is no valid one"
printf '+ %s\n' "TOKEN=\$(wxtoken get --appid $appid_classic --min-ttl 5m) || exit 1"
TOKEN=$(wxtoken get --appid "$appid_classic" --min-ttl 5m) || die "get failed"
[[ -n $TOKEN ]] || die "get printed nothing"
printf '%s\n' "got a token of ${#TOKEN} characters: ${TOKEN:0:16}..."

say "The same as one JSON object, for programs"
run wxtoken get --appid "$appid_stable" --json

say "A WeChat call failed with 40001 (token invalid or not the newest)? Reject that token to"
printf '# %s\n' "get a newer one: fetched only if it is still the newest, so many callers cause one fetch"
printf '+ %s\n' "NEW=\$(wxtoken get --appid $appid_classic --reject \"\$TOKEN\") || exit 1"
NEW=$(wxtoken get --appid "$appid_classic" --reject "$TOKEN") || die "get --reject failed"
[[ -n $NEW && $NEW != "$TOKEN" ]] || die "get --reject did not print a new token"
printf '%s\n' "got a new token: ${NEW:0:16}..."

say "Publish tokens where applications already look: a hook gets each new token on stdin"
printf '# %s\n' "(a Redis sink writes the key and value an SDK reads: see docs/integrations/)"
run wxtoken sink add hook --exec "wc -c > $tmp/hook.out" --appid "$appid_classic"
run wxtoken sink test hook
[[ -s $tmp/hook.out ]] || die "the hook did not run"
printf '%s\n' "the hook read $(tr -d ' ' < "$tmp/hook.out") bytes (the token and a newline) from stdin"

say "An appid wxtoken does not know: nothing on stdout, a reason on stderr, exit code 3"
code=0
printf '+ %s\n' "wxtoken get --appid wx00000000unknown0"
wxtoken get --appid wx00000000unknown0 || code=$?
printf '%s\n' "exit code $code"
[[ $code -eq 3 ]] || die "expected exit code 3, got $code"
cat <<'EOF'
# In a script:
#   if TOKEN=$(wxtoken get --appid "$APPID"); then
#       call_wechat "$TOKEN"
#   else
#       code=$?   # 3: no valid token; anything else: see the exit-code table in README.md
#   fi
EOF

say "Monitoring: a Nagios/Icinga check (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)"
run wxtoken status --check

say "What a refresh would do, without calling WeChat (a fetch rotates the token)"
run wxtoken refresh --dry-run --if-expiring-within 5m

say "One JSON line per account and a summary, for log shippers, and the Prometheus textfile"
run wxtoken refresh --json --force --metrics-file "$tmp/wxtoken.prom"
printf '+ %s\n' "grep -E '^wxtoken_(last_success|token_expiry)' $tmp/wxtoken.prom"
grep -E '^wxtoken_(last_success|token_expiry)' "$tmp/wxtoken.prom" || die "no metrics in the textfile"

say "Done: the demo database and the stand-in are being removed. Next: README.md, docs/operating.md, crontab.example"
