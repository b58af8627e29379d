#!/bin/bash
# The real-program scenario of `run realprog` (runs INSIDE the environment, as pid 1 of its pid
# namespace; see ./run). python3 (its sqlite3 module: SQLite, code no one here wrote) inserts rows
# into a database and keeps a buffer (64 MiB by default) whose pages are stamped with a known
# function of its progress; a second thread writes a sequence number continuously into a small
# "race" area (one page after another, and a header slot), so that writes race CRIU's freeze.
# CRIU pre-dumps it N times while it runs (--pre N), dumps it (with --track-mem --prev-images-dir
# when there are pre-dumps), kills it, restores it, lets it run on, stops it, and everything is
# checked from outside:
#   - the database: PRAGMA integrity_check is "ok"; count(*) equals the rows the program says it
#     inserted; ids are 0..count-1; every row's h column is sha1(id) (recomputed from outside),
#     and a checksum of the whole table is printed;
#   - the race check: a post-dump action script reads the buffer and the race area through
#     /proc/PID/mem while CRIU still holds the task frozen (after the pages were dumped): that is
#     exactly what the restored process must hold. The restore leaves the task stopped
#     (--leave-stopped); the same areas are read again and must be byte-identical (sha256), and
#     the sequence number in the restored memory must equal the one seen at freeze. Then the
#     task continues: its final sequence number must be >= that value;
#   - the program verifies its buffer and race area against their formulas at exit (bad_pages).
# Prints the wall time of each step, CRIU's counters (stats-dump) and a one-line summary
# ("realprog: result ...") for scripts.
#
# Options: --pre N (pre-dumps before the dump; stock CRIU refuses them without soft-dirty),
#          --mem MiB (buffer size, default 64), --run S (seconds before the first (pre-)dump,
#          default 3), --gap S (seconds between pre-dumps and before the dump, default 1),
#          --touch-every K (stamp one buffer page every K rows, default 1),
#          --rate PCT (instead: stamp PCT % of the buffer's pages per second, by the clock),
#          --race-kib K (race area size, default 256 KiB),
#          --prefill (stamp every buffer page once before the run: the whole buffer is resident),
#          --no-race-check (no post-dump action script: it runs inside the freeze, so CRIU's
#          frozen_time includes it; use this for timings).

set -uo pipefail
PRE=0
MEM=64
RUNFOR=3
GAP=1
EVERY=1
RATE=0
RACE_KIB=256
RACECHECK=1
PREFILL=0
while [ $# -gt 0 ]; do
	case $1 in
	--pre) PRE=$2; shift 2 ;;
	--mem) MEM=$2; shift 2 ;;
	--run) RUNFOR=$2; shift 2 ;;
	--gap) GAP=$2; shift 2 ;;
	--touch-every) EVERY=$2; shift 2 ;;
	--rate) RATE=$2; shift 2 ;;
	--race-kib) RACE_KIB=$2; shift 2 ;;
	--no-race-check) RACECHECK=0; shift ;;
	--prefill) PREFILL=1; shift ;;
	*) echo "realprog: unknown option $1" >&2; exit 2 ;;
	esac
done

W=/tmp/realprog
rm -rf "$W"
mkdir -p "$W"
cd "$W" || exit 1

cat >writer.py <<'EOF'
import ctypes, hashlib, json, os, signal, sqlite3, sys, threading, time
db_path, status_path, layout_path = sys.argv[1], sys.argv[2], sys.argv[3]
mem_mib, every, rate, race_kib = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
prefill = sys.argv[8] == "1"
PAGE = 4096
buf = bytearray(mem_mib << 20)
pages = len(buf) // PAGE
race = bytearray(race_kib << 10)   # page 0: header (seq at offset 0); pages 1..: seq stamps
race_pages = len(race) // PAGE - 1
stop = False
def on_term(sig, frm):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)

def stamp(j):
    return hashlib.sha256(str(j).encode()).digest() * (PAGE // 32)
t = 0  # pages stamped so far
if prefill:
    while t < pages:
        buf[t * PAGE:(t + 1) * PAGE] = stamp(t)
        t += 1

def addr(b):
    return ctypes.addressof((ctypes.c_char * len(b)).from_buffer(b))
with open(layout_path + ".tmp", "w") as f:
    json.dump({"buf": [addr(buf), len(buf)], "race": [addr(race), len(race)]}, f)
os.rename(layout_path + ".tmp", layout_path)

# The racer: seq is written to the header and to race page 1 + (seq % race_pages), continuously.
seq = 0
def racer():
    global seq
    while not stop:
        seq += 1
        b = seq.to_bytes(8, "little")
        p = 1 + seq % race_pages
        race[p * PAGE:p * PAGE + 8] = b
        race[0:8] = b
threading.Thread(target=racer, daemon=True).start()

db = sqlite3.connect(db_path)
db.execute("create table if not exists t (id integer primary key, v blob, h text)")
db.commit()
n = 0
t0 = time.monotonic()
t_start = t
while not stop:
    if rate > 0:
        want = t_start + int((time.monotonic() - t0) * rate / 100.0 * pages)
    else:
        want = t + 1 if n % every == 0 else t
    while t < want:
        p = t % pages
        buf[p * PAGE:(p + 1) * PAGE] = stamp(t)
        t += 1
    db.execute("insert into t values (?, ?, ?)", (n, os.urandom(512), hashlib.sha1(str(n).encode()).hexdigest()))
    n += 1
    if n % 200 == 0:
        db.commit()
db.commit()
db.close()
time.sleep(0.05)  # the racer stops
last = seq
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
# Verify the race area: every page holds 0 or a seq s <= last with 1 + s % race_pages == p, and
# the header equals the greatest of them.
bad_race = 0
top = 0
for p in range(1, race_pages + 1):
    s = int.from_bytes(race[p * PAGE:p * PAGE + 8], "little")
    if s and (s > last or 1 + s % race_pages != p):
        bad_race += 1
    top = max(top, s)
    if any(race[p * PAGE + 8:(p + 1) * PAGE]):
        bad_race += 1
if int.from_bytes(race[0:8], "little") != top:
    bad_race += 1
with open(status_path, "w") as f:
    json.dump({"rows_inserted": n, "pages_stamped": t, "bad_pages": bad, "pages": pages,
               "seq": last, "bad_race_pages": bad_race}, f)
EOF

# memsnap PID OUT: sha256 of the buffer and the race area, and the seq in the header (from
# /proc/PID/mem: works while CRIU holds the task, and on a stopped task).
cat >memsnap.py <<'EOF'
import hashlib, json, sys
pid, layout, out = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
res = {}
with open("/proc/%s/mem" % pid, "rb", buffering=0) as m:
    for name, (a, ln) in layout.items():
        m.seek(a)
        h = hashlib.sha256()
        left = ln
        first = None
        while left:
            chunk = m.read(min(left, 1 << 20))
            if first is None:
                first = chunk[:8]
            h.update(chunk)
            left -= len(chunk)
        res[name] = h.hexdigest()
        if name == "race":
            res["seq"] = int.from_bytes(first, "little")
json.dump(res, open(out, "w"))
EOF

# The post-dump action script: CRIU runs it after the pages are dumped, with the tree still frozen.
cat >post-dump.sh <<EOF
#!/bin/sh
[ "\$CRTOOLS_SCRIPT_ACTION" = post-dump ] || exit 0
exec python3 $W/memsnap.py "\$CRTOOLS_INIT_PID" $W/layout.json $W/frozen.json
EOF
chmod +x post-dump.sh

ms() { date +%s%3N; }
# stats DIR: CRIU's own counters of a (pre-)dump (stats-dump image), one line; also sets
# FROZEN_US and PAGES_WRITTEN.
FROZEN_US=
PAGES_WRITTEN=
PAGES_PARENT=
stats() {
	local line
	line=$(PYTHONPATH=$CRIU_SRC/lib python3 - "$1/stats-dump" <<'PY' 2>/dev/null
import sys, pycriu
e = pycriu.images.load(open(sys.argv[1], "rb"))["entries"][0]["dump"]
keys = ["freezing_time", "frozen_time", "memdump_time", "memwrite_time", "pages_scanned",
        "pages_skipped_parent", "pages_written"]
print(" ".join("%s=%s" % (k, e.get(k)) for k in keys))
PY
	)
	if [ -z "$line" ]; then echo "realprog:   (no stats-dump)"; return; fi
	echo "realprog:   stats: $line (times in us)"
	FROZEN_US=$(sed -n 's/.*frozen_time=\([0-9]*\).*/\1/p' <<<"$line")
	PAGES_WRITTEN=$(sed -n 's/.*pages_written=\([0-9]*\).*/\1/p' <<<"$line")
	PAGES_PARENT=$(sed -n 's/.*pages_skipped_parent=\([0-9]*\).*/\1/p' <<<"$line")
}
STEP_MS=0
step() { # step NAME CMD...
	local name=$1 t0 t1 rc
	shift
	t0=$(ms)
	"$@"
	rc=$?
	t1=$(ms)
	STEP_MS=$((t1 - t0))
	printf 'realprog: %-28s %6d ms  (exit %d)\n' "$name" "$STEP_MS" $rc
	return $rc
}

setsid python3 writer.py "$W/db.sqlite" "$W/status.json" "$W/layout.json" "$MEM" "$EVERY" "$RATE" "$RACE_KIB" "$PREFILL" \
	</dev/null >"$W/writer.log" 2>&1 &
PID=$!
disown
for _ in $(seq 1 600); do [ -s "$W/layout.json" ] && break; sleep 0.1; done
[ -s "$W/layout.json" ] || { echo "realprog: writer did not start"; cat "$W/writer.log"; exit 1; }
echo "realprog: writer pid $PID, ${MEM} MiB buffer ($([ "$RATE" != 0 ] && echo "$RATE %/s" || echo "1 page per $EVERY rows")$([ $PREFILL = 1 ] && echo ", prefilled")), race area ${RACE_KIB} KiB, running ${RUNFOR}s"
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
	grep -h "dirty-track: [0-9]*: fd" "$W/pre$i/pre.log" | sed 's/^.*dirty-track: /realprog:   tracker: /'
	PREV=pre$i
	sleep "$GAP"
done

mkdir -p "$W/dump"
dargs=(dump -t "$PID" -D "$W/dump" -o dump.log -v4 --file-locks)
[ $RACECHECK = 1 ] && dargs+=(--action-script "$W/post-dump.sh")
if [ -n "$PREV" ]; then
	dargs+=(--track-mem --prev-images-dir "../$PREV")
fi
if ! step "dump" criu "${dargs[@]}"; then
	echo "realprog: dump failed; log tail:"
	grep -E "Error" "$W/dump/dump.log" | tail -10
	kill -9 "$PID" 2>/dev/null
	exit 1
fi
DUMP_MS=$STEP_MS
echo "realprog: dump images $(du -sh "$W/dump" | cut -f1) (pages: $(du -ch "$W"/dump/pages-*.img | tail -1 | cut -f1))"
stats "$W/dump"
grep -h "dirty-track: [0-9]*: fd" "$W/dump/dump.log" | sed 's/^.*dirty-track: /realprog:   tracker: /'
if kill -0 "$PID" 2>/dev/null; then
	echo "realprog: writer still alive after dump?"; FAIL=1
fi
# Count on a copy: opening the database itself would roll back the hot journal of the killed
# writer's open transaction and change the file under the restore ("bad size").
mkdir -p "$W/atdump"
cp "$W"/db.sqlite* "$W/atdump/"
rows_at_dump=$(sqlite3 "$W/atdump/db.sqlite" 'select count(*) from t')
echo "realprog: rows committed at dump: $rows_at_dump"
if [ $RACECHECK = 1 ] && [ ! -s "$W/frozen.json" ]; then
	echo "realprog: the post-dump script saw nothing"
	FAIL=1
fi

if ! step "restore" criu restore -D "$W/dump" -o restore.log -v4 -d --file-locks --leave-stopped; then
	echo "realprog: restore failed; log tail:"
	grep -E "Error" "$W/dump/restore.log" | tail -10
	exit 1
fi
RESTORE_MS=$STEP_MS
kill -0 "$PID" 2>/dev/null || { echo "realprog: restored writer not running"; exit 1; }
python3 memsnap.py "$PID" layout.json restored.json || FAIL=1
kill -CONT "$PID"
[ $RACECHECK = 1 ] || cp restored.json frozen.json
race=$(python3 - frozen.json restored.json <<'PY'
import json, sys
f, r = (json.load(open(p)) for p in sys.argv[1:3])
ok = f == r
print("%s frozen seq=%d restored seq=%d buffer %s race %s" % ("ok" if ok else "MISMATCH", f["seq"], r["seq"],
      "identical" if f["buf"] == r["buf"] else "DIFFERS", "identical" if f["race"] == r["race"] else "DIFFERS"))
PY
)
if [ $RACECHECK = 1 ]; then
	echo "realprog: race check: $race"
	case $race in ok*) ;; *) FAIL=1 ;; esac
else
	echo "realprog: race check skipped (--no-race-check); seq at restore: ${race#* restored seq=}"
fi
frozen_seq=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["seq"])' frozen.json 2>/dev/null || echo -1)

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
# Every row's h is sha1(id), and a checksum of the whole table (ids, blobs, hashes in id order).
read -r badh checksum < <(python3 - "$W/db.sqlite" <<'PY'
import hashlib, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
bad, h = 0, hashlib.sha256()
for i, v, s in db.execute("select id, v, h from t order by id"):
    if s != hashlib.sha1(str(i).encode()).hexdigest() or len(v) != 512:
        bad += 1
    h.update(str(i).encode() + v + s.encode())
print(bad, h.hexdigest()[:16])
PY
)
status=$(cat "$W/status.json" 2>/dev/null)
echo "realprog: integrity_check=$integrity rows=$rows max(id)=$maxid bad-rows=$badh table-sha256=$checksum"
echo "realprog: writer-status=$status"
get() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$W/status.json" "$1" 2>/dev/null || echo -1; }
inserted=$(get rows_inserted)
bad=$(get bad_pages)
badrace=$(get bad_race_pages)
final_seq=$(get seq)
[ "$integrity" = ok ] || FAIL=1
[ "$rows" = "$inserted" ] || FAIL=1
[ "$rows" -ge "$rows_at_dump" ] || FAIL=1
[ "$((maxid + 1))" = "$rows" ] || FAIL=1
[ "$badh" = 0 ] || FAIL=1
[ "$bad" = 0 ] || FAIL=1
[ "$badrace" = 0 ] || FAIL=1
if [ "$final_seq" -lt "$frozen_seq" ] || [ "$frozen_seq" -le 0 ]; then
	echo "realprog: final seq $final_seq < seq at freeze $frozen_seq"
	FAIL=1
fi
echo "realprog: result pre=$PRE mem=${MEM}MiB dump_ms=$DUMP_MS frozen_us=${FROZEN_US:-?} pages_written=${PAGES_WRITTEN:-?} pages_parent=${PAGES_PARENT:-?} restore_ms=$RESTORE_MS seq_frozen=$frozen_seq seq_final=$final_seq rows=$rows"
if [ $FAIL = 0 ]; then echo "realprog: PASS"; else echo "realprog: FAIL"; fi
exit $FAIL
