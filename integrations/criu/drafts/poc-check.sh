#!/bin/bash
# Proof of concept of DESIGN.md's CRIU side, with drafts/9999-dirtytrack-poc.patch (NOT the
# series: it is kept out of patches/ so that `run` builds stock CRIU). Build and run:
#   DIRTYTRACK_CRIU_PATCHES=$PWD/integrations/criu/drafts integrations/criu/run shell -- \
#       bash /dirtytrack/integrations/criu/drafts/poc-check.sh
#   integrations/criu/run setup        # back to stock afterwards
# The patch (a) creates a userfaultfd inside each task with compel_syscall() between
# compel_prepare_noctx() and compel_infect() when CRIU_DT_POC_INJECT is set, and (b) leaves
# userfaultfds at fd >= 900 out of collect_fds(). Checked here: the fd CRIU's compel made is a
# working tracker (registration and PAGEMAP_SCAN harvests from a separate process, as
# libdirtytrack would do), and criu dump + restore succeed with it present (issue #2021 gone).
set -u
W=/tmp/poc
rm -rf "$W"; mkdir -p "$W"; cd "$W" || exit 1
gcc -O2 -Wall -o uffd_adopt /dirtytrack/integrations/criu/proto/uffd_adopt.c || exit 1
mkfifo cmd
FAIL=0
expect() { if [ "$2" = "$3" ]; then echo "poc: ok   $1: $2"; else echo "poc: FAIL $1: got '$2', want '$3'"; FAIL=1; fi; }
setsid ./uffd_adopt target 16 nouffd <cmd >out 2>&1 &
disown
exec 3>cmd
for _ in $(seq 50); do [ -s out ] && break; sleep 0.1; done
read -r PID ADDR _ <out
say() { echo "$1" >&3; sleep 0.2; }
h() { ./uffd_adopt harvest "$PID" "$ADDR" 16 "$@" | sed 's/^written: *//; s/^written:$//'; }
echo "poc: target pid $PID (no userfaultfd of its own), 16 pages at 0x$ADDR"

# 1. CRIU creates the userfaultfd in the seized task (dump --leave-running stands in for pre-dump).
mkdir -p d1
t0=$(date +%s%N)
CRIU_DT_POC_INJECT=1 criu dump -t "$PID" -D d1 -o dump.log -v4 --leave-running >/dev/null 2>&1
rc=$?
t1=$(date +%s%N)
echo "poc: criu dump --leave-running with injection: exit $rc, $(( (t1 - t0) / 1000000 )) ms: $(grep -o 'dt-poc: userfaultfd created.*' d1/dump.log)"
[ $rc = 0 ] || { grep Error d1/dump.log | tail -5; FAIL=1; }
expect "fd 900 in the target" "$(readlink /proc/"$PID"/fd/900)" "anon_inode:[userfaultfd]"

# 2. A separate process adopts it (pidfd_getfd, UFFDIO_API, UFFDIO_REGISTER) and harvests.
expect "first harvest through CRIU's fd, every page" "$(h init)" "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"
say "w 3"; say "w 7"
expect "after writes to 3 and 7" "$(h)" "3 7"

# 3. A second CRIU run with the tracker present (no injection): the fd is hidden, dump succeeds.
mkdir -p d2
CRIU_DT_POC_INJECT= criu dump -t "$PID" -D d2 -o dump.log -v4 --leave-running >/dev/null 2>&1
rc=$?
echo "poc: criu dump --leave-running, fd 900 present: exit $rc: $(grep -o 'dt-poc: skipping.*' d2/dump.log)"
[ $rc = 0 ] || { grep Error d2/dump.log | tail -5; FAIL=1; }
expect "harvest after that dump: no false writes" "$(h)" ""
say "w 11"
expect "still tracked: write to 11" "$(h)" "11"

# 4. Final dump (task killed) and restore: the restored task has no userfaultfd.
mkdir -p d3
criu dump -t "$PID" -D d3 -o dump.log -v4 >/dev/null 2>&1
rc=$?
echo "poc: criu dump (final): exit $rc"
[ $rc = 0 ] || { grep Error d3/dump.log | tail -5; FAIL=1; }
criu restore -D d3 -o restore.log -v4 -d >/dev/null 2>&1
rc=$?
echo "poc: criu restore: exit $rc"
[ $rc = 0 ] || { grep Error d3/restore.log | tail -5; FAIL=1; }
if kill -0 "$PID" 2>/dev/null; then
	echo "poc: ok   restored pid $PID alive; fds: $(ls /proc/"$PID"/fd | tr '\n' ' ')"
	[ -e /proc/"$PID"/fd/900 ] && { echo "poc: FAIL fd 900 came back"; FAIL=1; }
	n0=$(grep -c '^ok' out)
	say "w 1"
	[ "$(grep -c '^ok' out)" -gt "$n0" ] && echo "poc: ok   restored target still obeys commands" || { echo "poc: FAIL restored target silent"; FAIL=1; }
	kill -9 "$PID"
else
	echo "poc: FAIL restored task not running"; FAIL=1
fi
exec 3>&-
if [ $FAIL = 0 ]; then echo "poc: PASS"; else echo "poc: FAIL"; fi
exit $FAIL
