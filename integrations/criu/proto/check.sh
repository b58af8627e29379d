#!/bin/bash
# Runs inside the environment: `integrations/criu/run shell -- bash /dirtytrack/integrations/criu/proto/check.sh`.
# Checks the kernel facts DESIGN.md relies on, with uffd_adopt.c (see its header), and reproduces
# CRIU issue #2021 with stock CRIU. Prints "proto: PASS" or "proto: FAIL".
set -u
W=/tmp/proto
rm -rf "$W"; mkdir -p "$W"; cd "$W" || exit 1
gcc -O2 -Wall -o uffd_adopt /dirtytrack/integrations/criu/proto/uffd_adopt.c || exit 1
mkfifo cmd
FAIL=0
expect() { # expect WHAT GOT WANT
	if [ "$2" = "$3" ]; then echo "proto: ok   $1: $2"; else echo "proto: FAIL $1: got '$2', want '$3'"; FAIL=1; fi
}
setsid ./uffd_adopt target 16 <cmd >out 2>&1 &
disown
exec 3>cmd
for _ in $(seq 50); do [ -s out ] && break; sleep 0.1; done
read -r PID ADDR FD <out
echo "proto: target pid $PID, 16 pages at 0x$ADDR, userfaultfd at fd $FD ($(readlink /proc/"$PID"/fd/"$FD"))"
say() { echo "$1" >&3; sleep 0.2; }

h() { ./uffd_adopt harvest "$PID" "$ADDR" 16 "$@" | sed 's/^written: *//; s/^written:$//'; }
expect "first harvest (init: API + REGISTER from the tracer), every page" "$(h init)" "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"
expect "second harvest, nothing written" "$(h)" ""
say "w 3"; say "w 7"
expect "after writes to pages 3 and 7 (new harvester process)" "$(h)" "3 7"
expect "again: re-armed by the previous scan" "$(h)" ""
say "w 15"
expect "after a write to page 15" "$(h)" "15"
grep -q " uw" <(awk -v a="$ADDR" '$1 ~ "^"a"-" {f=1} f && /VmFlags/ {print; exit}' /proc/"$PID"/smaps) &&
	echo "proto: ok   the range shows 'uw' in smaps VmFlags" || { echo "proto: FAIL no 'uw' flag"; FAIL=1; }

# Issue #2021 with stock CRIU: the userfaultfd makes criu dump fail.
mkdir -p d
criu dump -t "$PID" -D d -o dump.log -v4 --leave-running >/dev/null 2>&1
rc=$?
msg=$(grep -o "Can't dump file.*" d/dump.log | head -1)
echo "proto: criu dump (stock) exit $rc: $msg"
[ $rc -ne 0 ] && [ -n "$msg" ] || { echo "proto: FAIL expected the #2021 refusal"; FAIL=1; }
kill -0 "$PID" 2>/dev/null && echo "proto: ok   target still alive after the refused dump" || { echo "proto: FAIL target died"; FAIL=1; }
expect "harvest after the refused dump (CRIU's seize/infect wrote nothing tracked)" "$(h)" ""

# A stock pre-dump seizes, infects, generates the pagemap and vmsplices every page (then hits
# BUG_ON(!kdat.has_dirty_track) at mem.c:45 and aborts): none of that may look like a write.
mkdir -p p
criu pre-dump -t "$PID" -D p -o pre.log -v4 >/dev/null 2>&1
rc=$?
echo "proto: criu pre-dump (stock) exit $rc: $(grep -o "BUG at.*" p/pre.log | head -1); pages vmspliced: $(grep -c "PPB:" p/pre.log) batches"
expect "harvest after CRIU's pre-dump walked and spliced the pages" "$(h)" ""
say "w 5"
expect "target still tracked after it: write to page 5" "$(h)" "5"

# fork: the child inherits the fd (same inode = the parent's context), not the registration.
say "fork"
CH=$(grep -o "child [0-9]*" out | tail -1 | cut -d' ' -f2)
pino=$(awk '/^ino:/{print $2}' /proc/"$PID"/fdinfo/"$FD")
cino=$(awk '/^ino:/{print $2}' /proc/"$CH"/fdinfo/"$FD" 2>/dev/null)
expect "child $CH holds fd $FD with the parent's inode" "$cino" "$pino"
cflags=$(awk -v a="$ADDR" '$1 ~ "^"a"-" {f=1} f && /VmFlags/ {print; exit}' /proc/"$CH"/smaps)
case "$cflags" in *" uw"*) echo "proto: FAIL child range still registered ($cflags)"; FAIL=1 ;;
*) echo "proto: ok   child range not registered (no 'uw')" ;; esac

kill -9 "$CH" "$PID" 2>/dev/null
exec 3>&-
if [ $FAIL = 0 ]; then echo "proto: PASS"; else echo "proto: FAIL"; fi
exit $FAIL
