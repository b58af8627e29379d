#!/bin/bash
# The real-program scenario of `run realprog` (runs INSIDE the environment, as pid 1 of its pid
# namespace; see ./run). A python3 program writes rows into an SQLite database and keeps 64 MiB of
# its own memory in a state that is a known function of how many rows it wrote. CRIU checkpoints
# it (optionally after N pre-dumps: --pre N), kills it, restores it, lets it run on, stops it,
# and everything is checked from outside:
#   - PRAGMA integrity_check of the database is "ok";
#   - the row count equals the number of rows the program says it inserted (so nothing written
#     before the dump was lost and nothing was replayed);
#   - the program verified its 64 MiB buffer against the formula at exit (memory restored right).
# Prints the wall time of each step and the image sizes.
#
# Options: --pre N (pre-dumps before the dump; stock CRIU refuses them without soft-dirty),
#          --mem MiB (default 64), --run S (seconds before the dump, default 3),
#          --touch-every K (stamp one page of the buffer every K rows, default 1: a lower
#          dirty rate makes incremental dumps meaningful).

set -uo pipefail
PRE=0
MEM=64
RUNFOR=3
EVERY=1
while [ $# -gt 0 ]; do
	case $1 in
	--pre) PRE=$2; shift 2 ;;
	--mem) MEM=$2; shift 2 ;;
	--run) RUNFOR=$2; shift 2 ;;
	--touch-every) EVERY=$2; shift 2 ;;
	*) echo "realprog: unknown option $1" >&2; exit 2 ;;
	esac
done

W=/tmp/realprog
rm -rf "$W"
mkdir -p "$W"
cd "$W" || exit 1

cat >writer.py <<'EOF'
import os, signal, sqlite3, sys, json, hashlib
db_path, status_path, mem_mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
PAGE = 4096
buf = bytearray(mem_mib << 20)
pages = len(buf) // PAGE
stop = False
def on_term(sig, frm):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
db = sqlite3.connect(db_path)
db.execute("create table if not exists t (id integer primary key, v blob, h text)")
db.commit()
n = 0
t = 0  # pages stamped so far: one every `every` rows
every = int(sys.argv[4])
def stamp(j):
    return hashlib.sha256(str(j).encode()).digest() * (PAGE // 32)
while not stop:
    if n % every == 0:
        p = t % pages
        buf[p * PAGE:(p + 1) * PAGE] = stamp(t)
        t += 1
    db.execute("insert into t values (?, ?, ?)", (n, os.urandom(512), hashlib.sha1(str(n).encode()).hexdigest()))
    n += 1
    if n % 200 == 0:
        db.commit()
db.commit()
db.close()
# Verify the buffer: page p holds stamp(j) for the last j < t with j % pages == p, else zeros.
bad = 0
for p in range(pages):
    if t > p:
        j = p + ((t - 1 - p) // pages) * pages
        want = stamp(j)
    else:
        want = bytes(PAGE)
    if buf[p * PAGE:(p + 1) * PAGE] != want:
        bad += 1
with open(status_path, "w") as f:
    json.dump({"rows_inserted": n, "pages_stamped": t, "bad_pages": bad, "pages": pages}, f)
EOF

ms() { date +%s%3N; }
# stats DIR: CRIU's own counters of a (pre-)dump (stats-dump image), one line.
stats() {
	PYTHONPATH=$CRIU_SRC/lib python3 - "$1/stats-dump" <<'PY' 2>/dev/null || echo "realprog:   (no stats-dump)"
import sys, pycriu
e = pycriu.images.load(open(sys.argv[1], "rb"))["entries"][0]["dump"]
keys = ["freezing_time", "frozen_time", "memdump_time", "memwrite_time", "pages_scanned",
        "pages_skipped_parent", "pages_written"]
print("realprog:   stats: " + " ".join("%s=%s" % (k, e.get(k)) for k in keys) + " (times in us)")
PY
}
step() { # step NAME CMD...
	local name=$1 t0 t1 rc
	shift
	t0=$(ms)
	"$@"
	rc=$?
	t1=$(ms)
	printf 'realprog: %-28s %6d ms  (exit %d)\n' "$name" $((t1 - t0)) $rc
	return $rc
}

setsid python3 writer.py "$W/db.sqlite" "$W/status.json" "$MEM" "$EVERY" </dev/null >"$W/writer.log" 2>&1 &
PID=$!
disown
echo "realprog: writer pid $PID, ${MEM} MiB buffer, running ${RUNFOR}s"
sleep "$RUNFOR"

FAIL=0
PREV=
for i in $(seq 1 "$PRE"); do
	mkdir -p "$W/pre$i"
	args=(pre-dump -t "$PID" -D "$W/pre$i" -o pre.log -v4 --file-locks)
	[ -n "$PREV" ] && args+=(--prev-images-dir "../pre$((i - 1))")
	if ! step "pre-dump $i" criu "${args[@]}"; then
		echo "realprog: pre-dump $i refused/failed; log tail:"
		grep -E "Error|Warn" "$W/pre$i/pre.log" | tail -5
		FAIL=1
		break
	fi
	echo "realprog: pre$i images $(du -sh "$W/pre$i" | cut -f1)"
	stats "$W/pre$i"
	PREV=pre$i
	sleep 1
done

mkdir -p "$W/dump"
dargs=(dump -t "$PID" -D "$W/dump" -o dump.log -v4 --file-locks)
if [ -n "$PREV" ]; then
	dargs+=(--track-mem --prev-images-dir "../$PREV")
fi
if ! step "dump" criu "${dargs[@]}"; then
	echo "realprog: dump failed; log tail:"
	grep -E "Error" "$W/dump/dump.log" | tail -10
	kill -9 "$PID" 2>/dev/null
	exit 1
fi
echo "realprog: dump images $(du -sh "$W/dump" | cut -f1) (pages: $(du -ch "$W"/dump/pages-*.img | tail -1 | cut -f1))"
stats "$W/dump"
if kill -0 "$PID" 2>/dev/null; then
	echo "realprog: writer still alive after dump?"; FAIL=1
fi
rows_at_dump=$(sqlite3 "$W/db.sqlite" 'select count(*) from t')
echo "realprog: rows committed at dump: $rows_at_dump"

if ! step "restore" criu restore -D "$W/dump" -o restore.log -v4 -d --file-locks; then
	echo "realprog: restore failed; log tail:"
	grep -E "Error" "$W/dump/restore.log" | tail -10
	exit 1
fi
kill -0 "$PID" 2>/dev/null || { echo "realprog: restored writer not running"; exit 1; }
sleep 2
kill -TERM "$PID"
for _ in $(seq 1 300); do
	kill -0 "$PID" 2>/dev/null || break
	sleep 0.1
done
kill -0 "$PID" 2>/dev/null && { echo "realprog: writer did not exit"; kill -9 "$PID"; exit 1; }

integrity=$(sqlite3 "$W/db.sqlite" 'PRAGMA integrity_check')
rows=$(sqlite3 "$W/db.sqlite" 'select count(*) from t')
maxid=$(sqlite3 "$W/db.sqlite" 'select max(id) from t')
status=$(cat "$W/status.json" 2>/dev/null)
echo "realprog: integrity_check=$integrity rows=$rows max(id)=$maxid writer-status=$status"
inserted=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rows_inserted"])' "$W/status.json" 2>/dev/null || echo -1)
bad=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bad_pages"])' "$W/status.json" 2>/dev/null || echo -1)
[ "$integrity" = ok ] || FAIL=1
[ "$rows" = "$inserted" ] || FAIL=1
[ "$rows" -ge "$rows_at_dump" ] || FAIL=1
[ "$((maxid + 1))" = "$rows" ] || FAIL=1
[ "$bad" = 0 ] || FAIL=1
if [ $FAIL = 0 ]; then echo "realprog: PASS"; else echo "realprog: FAIL"; fi
exit $FAIL
