#!/usr/bin/env bash
# The Debian package under a real systemd: boots Debian bookworm in systemd-nspawn, and
# inside it installs the .deb and operates it exactly as docs/operating.md's "Debian package"
# section says (probe.sh reads the commands from docs/operating.md), as systemd runs things:
#   1. sysusers and tmpfiles ran (the wxtoken user and group, /var/lib/wxtoken 0750);
#   2. both timers are enabled and scheduled, with their RandomizedDelaySec and Persistent=;
#   3. an account added as the manual says; `systemctl start wxtoken.service` fetches from
#      the stand-in on the host's loopback, ends inactive (dead) with result success, the
#      journal holds the summary line, and a member of the wxtoken group gets the token;
#   4. a run that WeChat refuses (40164) leaves the unit failed with exit status 4 in
#      `systemctl status`, and `status --check` says CRITICAL;
#   5. every hardening directive was on for 3 and 4 (the unit systemd ran is the packaged
#      file, no drop-ins), and `systemd-analyze security` stays at or under 1.5;
#   6. wxtoken-receive.socket, enabled as docs/receiving.md says, accepts a connection and
#      a ticket push that wechatpy encrypted (as tests/push.rs does) is answered `success`
#      through systemd's own socket activation and stored; a forged one gets 403 and leaves
#      no failed unit;
#   7. `apt remove` keeps the database and the key; `apt purge` as the manual says.
# Also: a run without the key file fails (exit 7), and the upgrade from the package whose
# units skipped every run (its /etc/wxtoken and key location) works as the manual says.
#
#   sudo bash tests/systemd/run.sh           # WXTOKEN_DEB=path.deb: test that package
#
# The probe's results, log, journal and units' status stay in <target>/systemd/out.
# Needs root, systemd-nspawn (systemd-container) and debootstrap, and the Debian mirror
# once: the root filesystem is built by debootstrap into <target>/systemd/rootfs and reused
# (rebuilt when the package list below changes); each run boots a copy of it. The boot is
# bounded (the probe powers off; past WXTOKEN_SYSTEMD_TIMEOUT seconds, default 300, the
# container is killed) and leaves nothing running or mounted. Without root or the tools,
# or if the container does not boot, it prints a NOTE and exits 0, except under CI=true,
# where it installs the tools with apt-get and fails instead.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root_dir=$(pwd)
start=$SECONDS

say() { printf '\n==> %s\n' "$*"; }
die() {
    printf 'systemd test failed: %s\n' "$*" >&2
    exit 1
}
skip() {
    [[ ${CI:-} == true ]] && die "$* (CI=true: not skipping)"
    printf 'NOTE: skipping the systemd test: %s\n' "$*"
    exit 0
}

[[ $(id -u) == 0 ]] || skip "it needs root (systemd-nspawn, debootstrap)"
if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
    [[ ${CI:-} == true ]] || skip "systemd-nspawn or debootstrap is missing (apt-get install systemd-container debootstrap)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        systemd-container debootstrap >/dev/null
fi
command -v python3 >/dev/null || skip "python3 is missing (the refusing stand-in)"

target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$root_dir/$target
work=$target/systemd
run=$work/run
mkdir -p "$work"

# ---- what the container runs: the .deb and the stand-in -----------------------------------
say "the package and the stand-in"
if [[ -n ${WXTOKEN_DEB:-} ]]; then
    deb=$(realpath "$WXTOKEN_DEB")
else
    command -v cargo-deb >/dev/null || skip "cargo-deb is missing (cargo install cargo-deb --locked), or set WXTOKEN_DEB"
    bash packaging/build-deb
    deb=$(ls -t "$target"/debian/wxtoken_*.deb | head -n 1)
fi
[[ -f $deb ]] || die "no package: $deb"
echo "package: $deb"
# The debug build, which `cargo test` and tests/demo.sh make anyway.
cargo build --quiet --locked -p wxtoken-standin --bin standin
standin=$target/debug/standin
[[ -x $standin ]] || die "no stand-in at $standin"

# ---- the root filesystem, cached -------------------------------------------------------------
suite=bookworm
mirror=${WXTOKEN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
include=systemd,systemd-sysv,dbus,sudo,procps
stamp="debootstrap --variant=minbase --include=$include $suite"
if [[ -f $work/rootfs/.wxtoken-stamp && $(<"$work/rootfs/.wxtoken-stamp") == "$stamp" ]]; then
    say "root filesystem: cached in $work/rootfs"
else
    say "root filesystem: $stamp (into $work/rootfs)"
    t=$SECONDS
    rm -rf "$work/rootfs" "$work/rootfs.new"
    if ! debootstrap --variant=minbase --include="$include" "$suite" "$work/rootfs.new" "$mirror" \
        >"$work/debootstrap.log" 2>&1; then
        tail -n 20 "$work/debootstrap.log"
        rm -rf "$work/rootfs.new"
        skip "debootstrap failed (log: $work/debootstrap.log)"
    fi
    printf '%s\n' "$stamp" >"$work/rootfs.new/.wxtoken-stamp"
    mv "$work/rootfs.new" "$work/rootfs"
    echo "debootstrap took $((SECONDS - t)) s"
fi

# ---- cleanup: nothing left running or mounted ------------------------------------------------
standin_pid=
fail_pid=
# Every process whose root is the container's tree (the container's init and anything it
# left, if nspawn was killed past the deadline).
container_pids() {
    local p
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/root" 2>/dev/null) == "$run/rootfs" ]] && printf '%s\n' "${p#/proc/}"
    done
    return 0
}
cleanup() {
    local pids
    pids=$(container_pids)
    [[ -n $pids ]] && kill -KILL $pids 2>/dev/null
    exec 3>&- 4>&- || true
    for pid in $standin_pid $fail_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    # Mounts under the run directory would be nspawn's, had it died in the middle.
    findmnt -rn -o TARGET | grep -F "$run/" | sort -r | xargs -r -n 1 umount -l 2>/dev/null || true
    # The probe's output stays, for a look after a failure.
    if [[ -d $run/out ]]; then
        rm -rf "$work/out"
        mv "$run/out" "$work/out"
    fi
    rm -rf "$run"
    # nspawn's own directories on the host, when this run made them.
    rmdir "/run/systemd/nspawn/propagate/$machine" 2>/dev/null || true
    if [[ $had_nspawn_dir == no ]]; then
        rmdir /run/systemd/nspawn/propagate /run/systemd/nspawn/locks /run/systemd/nspawn \
            2>/dev/null || true
    fi
    return 0
}
# A machine name of its own, so that two checkouts can run this at once.
machine=wxtoken-ci-$$
had_nspawn_dir=no
[[ -e /run/systemd/nspawn ]] && had_nspawn_dir=yes
if findmnt -rn -o TARGET | grep -qF "$run/"; then
    die "something is still mounted under $run: $(findmnt -rn -o TARGET | grep -F "$run/")"
fi
rm -rf "$run"
mkdir -p "$run/in/target/debian" "$run/out"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The stand-ins read stdin from FIFOs this script holds open (fds 3 and 4): they exit when
# it does, even if it is killed with SIGKILL.
mkfifo "$run/standin.stdin" "$run/fail.stdin"
"$standin" --port 0 --exit-on-stdin-eof <"$run/standin.stdin" >"$run/standin.url" &
standin_pid=$!
exec 3>"$run/standin.stdin"
python3 tests/systemd/errcode-standin.py 40164 <"$run/fail.stdin" >"$run/fail.url" 2>"$run/fail.log" &
fail_pid=$!
exec 4>"$run/fail.stdin"
wait_url() {
    local i
    for i in $(seq 100); do
        [[ -s $1 ]] && { head -n 1 "$1"; return 0; }
        sleep 0.1
    done
    die "no URL from the stand-in in $1"
}
standin_url=$(wait_url "$run/standin.url")
fail_url=$(wait_url "$run/fail.url")
echo "stand-in: $standin_url; refusing (40164): $fail_url"

# ---- 6. the pushes the receiver gets: encrypted by wechatpy on the host ----------------------
# The container has no Python: the requests are made here, whole, and sent from there with
# bash's /dev/tcp. The message Token and EncodingAESKey are test values, given to the probe
# in /in/crypto for `platform set-crypto`.
say "a ticket push from wechatpy"
python=$target/sdk/venv/bin/python
push_token=probePushToken
push_key=kQ3vJ8nW2xR5tY7uI0oP9aS4dF6gH1jK3lZ5xC7vB9n
make_pushes() {
    local ts plain
    ts=$(date +%s)
    plain="<xml><AppId><![CDATA[wxc0ffee0123456789]]></AppId><CreateTime>$ts</CreateTime><InfoType><![CDATA[component_verify_ticket]]></InfoType><ComponentVerifyTicket><![CDATA[ticket@@@probe0ticket0value]]></ComponentVerifyTicket></xml>"
    printf '%s' "$plain" | PUSH_TOKEN=$push_token PUSH_AES_KEY=$push_key \
        "$python" tests/sdk/wechatpy_crypto.py encrypt op wxc0ffee0123456789 "$ts" 1320562132 \
        >"$run/push.json" || return 1
    python3 - "$run/push.json" "$run/in" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
def request(sig):
    q = "timestamp=%s&nonce=%s&msg_signature=%s&encrypt_type=aes" % (p["timestamp"], p["nonce"], sig)
    return ("POST /wxtoken/component/wxc0ffee0123456789?%s HTTP/1.1\r\nHost: probe\r\n"
            "Content-Type: text/xml\r\nContent-Length: %d\r\n\r\n%s" % (q, len(p["body"]), p["body"]))
open(sys.argv[2] + "/push.http", "w").write(request(p["msg_signature"]))
open(sys.argv[2] + "/forged.http", "w").write(request("0" * 40))
PY
}
if [[ -x $python ]] && make_pushes; then
    printf '%s\n%s\n' "$push_token" "$push_key" >"$run/in/crypto"
    echo "push: $(wc -c <"$run/in/push.http") bytes"
else
    [[ ${CI:-} == true ]] && die "no wechatpy venv at $python to build the push (.ci/run makes it)"
    echo "NOTE: no wechatpy venv at $python: the receiver's checks (6) are skipped"
fi

# ---- this run's container: a copy of the cached tree, with the probe -------------------------
say "boot the container (deadline ${WXTOKEN_SYSTEMD_TIMEOUT:-300} s)"
cp -a --reflink=auto "$work/rootfs" "$run/rootfs"
etc=$run/rootfs/etc
cp tests/systemd/wxtoken-probe.service "$etc/systemd/system/"
ln -s ../wxtoken-probe.service "$etc/systemd/system/multi-user.target.wants/wxtoken-probe.service"
# Nothing else at boot reaches the network: apt's daily timers stay off.
ln -sf /dev/null "$etc/systemd/system/apt-daily.timer"
ln -sf /dev/null "$etc/systemd/system/apt-daily-upgrade.timer"
echo wxtoken-ci >"$etc/hostname"
printf '127.0.1.1\twxtoken-ci\n' >>"$etc/hosts"
cp docs/operating.md tests/systemd/probe.sh "$run/in/"
cp packaging/systemd/wxtoken.service packaging/systemd/ahead/wxtoken-ahead.service "$run/in/"
cp "$deb" "$run/in/target/debian/"
printf 'STANDIN_URL=%s\nFAIL_URL=%s\n' "$standin_url" "$fail_url" >"$run/in/env"

t=$SECONDS
set +e
timeout --kill-after=10 "${WXTOKEN_SYSTEMD_TIMEOUT:-300}" \
    systemd-nspawn --quiet --keep-unit --register=no --machine="$machine" --hostname=wxtoken-ci \
    --directory="$run/rootfs" --bind="$run/out:/out" --bind-ro="$run/in:/in" \
    --console=read-only --boot </dev/null >"$run/console.log" 2>&1 3>&- 4>&-
code=$?
set -e
echo "the container ran for $((SECONDS - t)) s (systemd-nspawn exit $code)"
[[ $code == 124 || $code == 137 ]] && echo "killed past the deadline"

# ---- results -----------------------------------------------------------------------------------
if [[ ! -e $run/out/probe.log ]]; then
    tail -n 40 "$run/console.log"
    skip "the container did not boot, or the probe never ran (systemd-nspawn exit $code)"
fi
say "results"
cat "$run/out/results" 2>/dev/null || true
failed=$(grep -c '^FAIL' "$run/out/results" 2>/dev/null) || true
passed=$(grep -c '^ok' "$run/out/results" 2>/dev/null) || true
if [[ ! -e $run/out/done || $failed != 0 || $passed == 0 ]]; then
    say "the probe's log (the commands it ran and their output)"
    tail -n 150 "$run/out/probe.log"
    say "wxtoken's units"
    cat "$run/out/units.txt" 2>/dev/null || true
    say "the journal (wxtoken, the probe, and errors)"
    grep -E 'wxtoken|probe|rror|ailed' "$run/out/journal.txt" 2>/dev/null | tail -n 120 ||
        tail -n 60 "$run/console.log"
    [[ $code == 124 || $code == 137 ]] && die "the container was killed past the ${WXTOKEN_SYSTEMD_TIMEOUT:-300} s deadline"
    [[ -e $run/out/done ]] || die "the probe did not finish"
    die "$failed of $((passed + failed)) checks failed"
fi
cat "$run/out/security.txt"
say "systemd test passed: $passed checks, $((SECONDS - start)) s in all"
