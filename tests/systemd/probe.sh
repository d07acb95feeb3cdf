#!/bin/bash
# Runs inside the booted container as wxtoken-probe.service (see run.sh), as root, once
# the system is up: installs the package and operates it the way docs/operating.md's "Debian
# package" section tells an operator to (its commands are read from /in/operating.md), checks
# what systemd did, then powers the container off. Results go to /out/results, one line
# per check ("ok NAME" or "FAIL NAME: why"), and /out/done when it finished; the journal
# and the units' states go to /out too, for run.sh to show on failure.
#
# /in (read-only): docs/operating.md, target/debian/wxtoken_*.deb, the packaged wxtoken.service,
# and env (STANDIN_URL: the stand-in on the host's loopback; FAIL_URL: one that answers
# every request with errcode 40164).
set -u
out=/out
exec >"$out/probe.log" 2>&1
set -x
. /in/env
export DEBIAN_FRONTEND=noninteractive
: >"$out/results"
started=$(date '+%Y-%m-%d %H:%M:%S')

ok() { printf 'ok   %s\n' "$1" >>"$out/results"; }
bad() { printf 'FAIL %s: %s\n' "$1" "$2" >>"$out/results"; }
# check NAME GOT WANT: GOT must equal WANT.
check() {
    if [[ $2 == "$3" ]]; then ok "$1"; else bad "$1" "got '$2', want '$3'"; fi
}
# check_match NAME GOT PATTERN: GOT must match the extended regex PATTERN.
check_match() {
    if [[ $2 =~ $3 ]]; then ok "$1"; else bad "$1" "got '$2', want /$3/"; fi
}
prop() { systemctl show -P "$2" "$1"; }
# The unit's state after a run: ActiveState SubState Result ExecMainStatus.
state() { printf '%s %s %s %s' "$(prop "$1" ActiveState)" "$(prop "$1" SubState)" "$(prop "$1" Result)" "$(prop "$1" ExecMainStatus)"; }
finish() {
    trap - EXIT
    systemctl list-timers --all --no-pager >"$out/timers.txt" 2>&1
    systemctl status --no-pager --full 'wxtoken*' >"$out/units.txt" 2>&1
    journalctl -b --no-pager -o short-precise >"$out/journal.txt" 2>&1
    touch "$out/done"
    systemctl poweroff --no-block
    exit 0
}

# A probe that stops on its own error still reports, and powers off.
trap 'bad probe "ended early, near line $LINENO"; finish' EXIT

# The manual's "Debian package" section, and its commands: readme_lines N PATTERN prints
# the lines of the section's Nth code block (1: build and install, 2: the operator's
# commands, 3: readers, 4: remove and purge, 5: the upgrade's move) that match PATTERN. Comments after # are left
# to the shell.
section=$(awk '/^### Debian package$/ { on = 1; next } on && /^##/ { exit } on' /in/operating.md)
readme_lines() {
    awk -v n="$1" -v re="$2" '/^```/ { if (!code) block++; code = !code; next }
        code && block == n && $0 ~ re' <<<"$section"
}
# run_readme N PATTERN NAME: runs those lines in order, stdin from /dev/null (a line may
# redirect its own), in the working directory; at least one must match.
run_readme() {
    local line n=0
    while IFS= read -r line; do
        n=$((n + 1))
        printf '+ %s\n' "$line"
        eval "$line" </dev/null || { bad "$3" "exit $? from: $line"; return 1; }
    done < <(readme_lines "$1" "$2")
    ((n > 0)) || { bad "$3" "no line matching /$2/ in code block $1 of the manual's Debian package section"; return 1; }
    ok "$3"
}

check "systemd is PID 1" "$(ps -o comm= -p 1)" systemd
systemctl --version | head -n 1

# The operator's working directory: the .deb where the manual's build puts it, and the
# AppSecret in secret.txt, as the manual's commands expect.
work=$(mktemp -d)
# apt's prompts ("Do you want to continue?") are answered yes, as the operator would.
printf 'APT::Get::Assume-Yes "true";\n' >/etc/apt/apt.conf.d/90wxtoken-probe
cd "$work"
mkdir -p target/debian
cp /in/target/debian/wxtoken_*.deb target/debian/
printf '%s\n' 'probe0secret0for0the0stand0in0001' >secret.txt
chmod 0644 secret.txt

# ---- install, as the manual says (systemd runs: the timers are enabled and started) ------
run_readme 1 '^sudo apt install ' "manual's install" || finish
check "package installed" "$(dpkg-query -W -f '${Status}' wxtoken)" "install ok installed"

# ---- 1. sysusers and tmpfiles ------------------------------------------------------------
check "wxtoken user (sysusers)" "$(getent passwd wxtoken | cut -d: -f1,6,7)" "wxtoken:/var/lib/wxtoken:/usr/sbin/nologin"
check "wxtoken group (sysusers)" "$(getent group wxtoken | cut -d: -f1)" wxtoken
check "/var/lib/wxtoken (tmpfiles)" "$(stat -c '%a %U:%G' /var/lib/wxtoken)" "750 wxtoken:wxtoken"
check "/etc/wxtoken (postinst)" "$(stat -c '%a %U:%G' /etc/wxtoken)" "700 wxtoken:wxtoken"
check "tmpfiles.d entry" "$(systemd-tmpfiles --cat-config 2>/dev/null | grep -c '^d /var/lib/wxtoken 0750 wxtoken wxtoken')" 1
# The entry as systemd-tmpfiles applies it (at boot, and in the postinst): it puts a
# widened directory back.
chmod 0755 /var/lib/wxtoken
systemd-tmpfiles --create wxtoken.conf
check "tmpfiles puts /var/lib/wxtoken back" "$(stat -c '%a %U:%G' /var/lib/wxtoken)" "750 wxtoken:wxtoken"

# ---- 2. both timers enabled and scheduled ------------------------------------------------
for timer in wxtoken.timer wxtoken-ahead.timer; do
    check "$timer enabled" "$(systemctl is-enabled "$timer")" enabled
    check "$timer active" "$(systemctl is-active "$timer")" active
    check_match "$timer scheduled" "$(prop "$timer" NextElapseUSecRealtime)" '^[A-Z][a-z]{2} [0-9]{4}-'
    check_match "$timer in list-timers" "$(systemctl list-timers --all --no-pager "$timer")" "$timer +${timer%.timer}.service"
done
check "wxtoken.timer RandomizedDelaySec" "$(prop wxtoken.timer RandomizedDelayUSec)" 5min
check "wxtoken.timer FixedRandomDelay" "$(prop wxtoken.timer FixedRandomDelay)" yes
check "wxtoken.timer Persistent" "$(prop wxtoken.timer Persistent)" yes
check "wxtoken-ahead.timer RandomizedDelaySec" "$(prop wxtoken-ahead.timer RandomizedDelayUSec)" 30s
check "wxtoken-ahead.timer Persistent" "$(prop wxtoken-ahead.timer Persistent)" no

# ---- 3. an account added as the manual says; systemd's run fetches its token -------------
# The operator points the package's environment at the API (here: the stand-in).
sed -i "s|^#WXTOKEN_API_BASE=.*|WXTOKEN_API_BASE=$STANDIN_URL|" /etc/default/wxtoken
check "WXTOKEN_API_BASE set" "$(grep -c "^WXTOKEN_API_BASE=$STANDIN_URL\$" /etc/default/wxtoken)" 1
run_readme 2 '^sudo -u wxtoken ' "manual's wxtoken commands" || finish
check "key file made by account add" "$(stat -c '%a %U:%G' /etc/wxtoken/wxtoken.key 2>&1)" "600 wxtoken:wxtoken"
# No run has fetched a token yet: monitoring says so.
check_text=$(sudo -u wxtoken sh -c 'set -a; . /etc/default/wxtoken; exec wxtoken status --check')
check_match "status --check before any run" "$? $check_text" '^2 WXTOKEN CRITICAL - .*wx1234567890abcdef: no valid token'
mark=$(date '+%Y-%m-%d %H:%M:%S')
run_readme 2 '^sudo systemctl start wxtoken.service' "manual's systemctl start"
check "wxtoken.service run" "$(state wxtoken.service)" "inactive dead success 0"
check "wxtoken.service condition" "$(prop wxtoken.service ConditionResult)" yes
check "wxtoken.service ran under its user" "$(prop wxtoken.service User)" wxtoken
journal=$(journalctl -u wxtoken.service --since "$mark" --no-pager -o cat)
check_match "journal: the run's summary" "$journal" 'refreshed 1 of 1 accounts'
# The 4-minute unit, under the same hardening: nothing is due, a quiet success.
systemctl start wxtoken-ahead.service
check "wxtoken-ahead.service run" "$(state wxtoken-ahead.service)" "inactive dead success 0"
# A member of the wxtoken group reads the token, as the manual says.
useradd --system --no-create-home --shell /usr/sbin/nologin myapp
token=
run_readme 3 '^sudo (usermod|chmod|systemctl) ' "manual's reader setup" && {
    get=$(readme_lines 3 '^sudo -u myapp ')
    printf '+ %s\n' "$get"
    token=$(eval "$get" </dev/null)
}
check_match "get as a member of the wxtoken group" "$token" '^[A-Za-z0-9_-]{20,}$'
owner_token=$(sudo -u wxtoken sh -c 'set -a; . /etc/default/wxtoken; exec wxtoken get --appid wx1234567890abcdef')
check "the same token as the wxtoken user's" "$token" "$owner_token"
check "no secret in the journal" "$(journalctl -b --no-pager -o cat | grep -c probe0secret0)" 0
sudo -u wxtoken sh -c 'set -a; . /etc/default/wxtoken; exec wxtoken status --check'
check "status --check after the run" "$?" 0

# ---- 4. a failing run: WeChat answers 40164 ----------------------------------------------
# A second account while the API refuses this host: the run tries both (every run renews
# each token), and the second one has no token at all.
sed -i "s|^WXTOKEN_API_BASE=.*|WXTOKEN_API_BASE=$FAIL_URL|" /etc/default/wxtoken
sudo -u wxtoken sh -c 'set -a; . /etc/default/wxtoken; exec wxtoken account add --appid wx0000000000c0ffee' <secret.txt
mark=$(date '+%Y-%m-%d %H:%M:%S')
systemctl start wxtoken.service
check "systemctl start of a failing run" "$?" 1
check "wxtoken.service failed run" "$(state wxtoken.service)" "failed failed exit-code 4"
status_text=$(systemctl status --no-pager --full wxtoken.service)
check_match "systemctl status shows the exit code" "$status_text" 'code=exited, status=4/'
journal=$(journalctl -u wxtoken.service --since "$mark" --no-pager -o cat)
check_match "journal: the failure" "$journal" 'wx0000000000c0ffee: .*40164'
check_match "journal: the failed summary" "$journal" 'refreshed 0 of 2 accounts; 2 failed: wx0000000000c0ffee\(40164\), wx1234567890abcdef\(40164\)'
check_text=$(sudo -u wxtoken sh -c 'set -a; . /etc/default/wxtoken; exec wxtoken status --check')
code=$?
check_match "status --check after the failure" "$code $check_text" '^2 WXTOKEN CRITICAL - .*wx0000000000c0ffee: no valid token, last fetch failed: 40164'
systemctl reset-failed wxtoken.service
# Without the key file (the case the units used to skip, unseen): a failed run, exit 7.
mv /etc/wxtoken/wxtoken.key /etc/wxtoken/wxtoken.key.away
sed -i "s|^WXTOKEN_API_BASE=.*|WXTOKEN_API_BASE=$STANDIN_URL|" /etc/default/wxtoken
systemctl start wxtoken.service
check "systemctl start without the key" "$?" 1
check "wxtoken.service without the key" "$(state wxtoken.service)" "failed failed exit-code 7"
check_match "journal: the missing key" "$(journalctl -u wxtoken.service -n 5 --no-pager -o cat)" '/etc/wxtoken/wxtoken.key'
mv /etc/wxtoken/wxtoken.key.away /etc/wxtoken/wxtoken.key
systemctl reset-failed wxtoken.service

# ---- 5. the hardening that was on during 3 and 4 -----------------------------------------
# The unit systemd ran is the packaged file, without drop-ins.
check "unit file is the packaged one" "$(prop wxtoken.service FragmentPath):$(prop wxtoken.service DropInPaths)" "/lib/systemd/system/wxtoken.service:"
if cmp -s /lib/systemd/system/wxtoken.service /in/wxtoken.service; then ok "unit file content"; else bad "unit file content" "differs from packaging/systemd/wxtoken.service"; fi
for p in NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes PrivateDevices=yes \
    PrivateMounts=yes ProtectKernelTunables=yes ProtectKernelModules=yes ProtectKernelLogs=yes \
    ProtectControlGroups=yes ProtectClock=yes ProtectHostname=yes RestrictRealtime=yes \
    RestrictSUIDSGID=yes LockPersonality=yes MemoryDenyWriteExecute=yes RemoveIPC=yes \
    CapabilityBoundingSet= AmbientCapabilities= SystemCallArchitectures=native \
    'RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK AF_UNIX' UMask=0027 \
    SystemCallErrorNumber=1 RestrictNamespaces=yes; do
    check "hardening $p" "${p%%=*}=$(prop wxtoken.service "${p%%=*}")" "$p"
done
check_match "hardening SystemCallFilter" "$(prop wxtoken.service SystemCallFilter)" '^[a-z_0-9]+ .*'
: >"$out/security.txt"
for unit in wxtoken.service wxtoken-ahead.service; do
    security=$(systemd-analyze security --no-pager "$unit" 2>&1 | tail -n 1)
    echo "$security" >>"$out/security.txt"
    exposure=$(sed -n "s/.*Overall exposure level for $unit: \([0-9.]*\).*/\1/p" <<<"$security")
    if [[ -n $exposure ]] && awk -v e="$exposure" 'BEGIN { exit !(e <= 1.5) }'; then
        ok "systemd-analyze security $unit: $exposure"
    else
        bad "systemd-analyze security $unit" "want <= 1.5, got: $security"
    fi
done
if cmp -s /lib/systemd/system/wxtoken-ahead.service /in/wxtoken-ahead.service; then ok "ahead unit file content"; else bad "ahead unit file content" "differs from packaging/systemd/ahead/wxtoken-ahead.service"; fi

# ---- upgrading from the package that skipped every run --------------------------------------
# Its layout: /etc/wxtoken 0750 root:wxtoken, and the key where account add put it. The
# postinst (run again by dpkg -i) gives the directory to wxtoken; the run fails (exit 7)
# until the manual's move.
chown root:wxtoken /etc/wxtoken
chmod 0750 /etc/wxtoken
install -d -o wxtoken -g wxtoken -m 0700 /var/lib/wxtoken/.config /var/lib/wxtoken/.config/wxtoken
mv /etc/wxtoken/wxtoken.key /var/lib/wxtoken/.config/wxtoken/key
dpkg -i "$work"/target/debian/wxtoken_*.deb
check "upgrade: /etc/wxtoken given to wxtoken" "$(stat -c '%a %U:%G' /etc/wxtoken)" "700 wxtoken:wxtoken"
systemctl start wxtoken.service
check "upgrade: the run before the move" "$(state wxtoken.service)" "failed failed exit-code 7"
systemctl reset-failed wxtoken.service
run_readme 5 '^sudo -u wxtoken mv ' "manual's upgrade move"
systemctl start wxtoken.service
check "upgrade: the run after the move" "$(state wxtoken.service)" "inactive dead success 0"
# key rotate, as the wxtoken user, replaces the key in /etc/wxtoken (keeping the old one
# beside it), and the next run reads the new one.
sudo -u wxtoken sh -c 'set -a; . /etc/default/wxtoken; exec wxtoken key rotate'
check "key rotate as the wxtoken user" "$?" 0
check "key rotate kept the old key" "$(stat -c '%a %U' /etc/wxtoken/wxtoken.key.old 2>&1)" "600 wxtoken"
systemctl start wxtoken.service
check "the run after key rotate" "$(state wxtoken.service)" "inactive dead success 0"

# ---- 6. wxtoken-receive.socket: a push through systemd's socket activation ----------------
# The push (from wechatpy on the host, see run.sh) goes to the socket as nginx would send it.
# http_to FILE: sends the request in FILE to 127.0.0.1:8787 and prints the response.
http_to() {
    local response
    exec 5<>/dev/tcp/127.0.0.1/8787 || return 1
    cat "$1" >&5
    response=$(timeout 20 cat <&5)
    exec 5<&- 5>&-
    printf '%s' "$response"
}
if [[ -f /in/push.http ]]; then
    as_wx() { sudo -u wxtoken sh -c 'set -a; . /etc/default/wxtoken; set +a; exec "$@"' sh "$@"; }
    printf '%s\n' 'probe0component0secret0000001' | as_wx wxtoken platform add --component wxc0ffee0123456789
    as_wx wxtoken platform set-crypto --component wxc0ffee0123456789 </in/crypto
    check "receiver: platform set up" "$?" 0
    check "receive socket not enabled by the package" "$(systemctl is-enabled wxtoken-receive.socket)" disabled
    systemctl enable --now wxtoken-receive.socket
    check "receive socket listening" "$(systemctl is-active wxtoken-receive.socket)" active
    mark=$(date '+%Y-%m-%d %H:%M:%S')
    response=$(http_to /in/push.http)
    check_match "receive: the push answered success" "$response" $'^HTTP/1.1 200 OK\r\n.*\r\n\r\nsuccess$'
    listed=$(as_wx wxtoken platform list --json)
    check_match "receive: the ticket stored" "$listed" '"ticket_created_at":"[0-9]{4}-'
    response=$(http_to /in/forged.http)
    check_match "receive: a forged push refused" "$response" '^HTTP/1.1 403 '
    journal=$(journalctl --since "$mark" --no-pager -o cat -u 'wxtoken-receive@*')
    check_match "journal: the refusal's line" "$journal" 'refused a request: msg_signature does not match'
    check "no receive instance failed" "$(systemctl list-units --failed --no-legend 'wxtoken-receive@*' | wc -l)" 0
    check "receive instances ran as wxtoken" "$(journalctl --since "$mark" --no-pager -o cat _UID="$(id -u wxtoken)" | grep -c 'refused a request')" 1
    check "no push secret in the journal" "$(journalctl -b --no-pager -o cat | grep -c -e probe0ticket0value -e probePushToken -e kQ3vJ8nW2xR5)" 0
    security=$(systemd-analyze security --no-pager wxtoken-receive@probe.service 2>&1 | tail -n 1)
    echo "$security" >>"$out/security.txt"
    exposure=$(sed -n 's/.*Overall exposure level for wxtoken-receive@probe.service: \([0-9.]*\).*/\1/p' <<<"$security")
    if [[ -n $exposure ]] && awk -v e="$exposure" 'BEGIN { exit !(e <= 1.5) }'; then
        ok "systemd-analyze security wxtoken-receive@.service: $exposure"
    else
        bad "systemd-analyze security wxtoken-receive@.service" "want <= 1.5, got: $security"
    fi
    systemctl disable --now wxtoken-receive.socket
else
    echo "no /in/push.http: the receiver's checks are skipped (see run.sh)"
fi

# ---- 7. remove keeps the database and the key; purge as the manual says ------------------
run_readme 4 '^sudo apt remove ' "manual's apt remove" || finish
check "remove: binary gone" "$(test -e /usr/bin/wxtoken && echo present || echo gone)" gone
units() {
    systemctl list-unit-files --no-legend wxtoken.service wxtoken.timer wxtoken-ahead.service \
        wxtoken-ahead.timer | awk '{ print $1, $2 }' | sort | paste -sd,
}
# The package's postrm masks the timers until purge (debhelper's way), so that nothing
# starts a unit of a removed package.
check "remove: units gone, timers masked" "$(units)" "wxtoken-ahead.timer masked,wxtoken.timer masked"
check "remove: timers stopped" "$(systemctl is-active wxtoken.timer wxtoken-ahead.timer | sort -u)" inactive
check "remove: database kept" "$(stat -c '%U' /var/lib/wxtoken/wxtoken.db 2>&1)" wxtoken
check "remove: key kept" "$(stat -c '%a %U' /etc/wxtoken/wxtoken.key 2>&1)" "600 wxtoken"
check "remove: configuration kept" "$(ls /etc/default/wxtoken /etc/cron.d/wxtoken 2>&1 | wc -l)" 2
run_readme 4 '^sudo apt purge ' "manual's apt purge" || finish
check "purge: units gone" "$(units)" ""
check "purge: configuration gone" "$(ls /etc/default/wxtoken /etc/cron.d/wxtoken 2>/dev/null | wc -l)" 0
check "purge: database kept" "$(stat -c '%U' /var/lib/wxtoken/wxtoken.db 2>&1)" wxtoken
check "purge: key kept" "$(stat -c '%a %U' /etc/wxtoken/wxtoken.key 2>&1)" "600 wxtoken"
check "failed units at the end" "$(systemctl list-units --failed --no-legend | wc -l)" 0

echo "probe started $started, ended $(date '+%Y-%m-%d %H:%M:%S')"
finish
