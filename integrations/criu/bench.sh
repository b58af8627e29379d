#!/bin/bash
# `run bench` (runs INSIDE the environment): the final dump of realprog.sh's writer after 0, 1 and
# 3 pre-dumps, side by side, in one run. The writer keeps a prefilled buffer (default 1 GiB, all
# resident) and stamps RATE % of its pages per second (default 1), plus its SQLite inserts and the
# race area (256 KiB). realprog.sh runs with --no-race-check (its post-dump action script would
# run inside the freeze) and checks everything else (database, buffer, restore).
# Options: --mem MiB (1024), --rate PCT (1), --pres "0 1 3", --gap S (1, between pre-dumps and
# before the final dump), --run S (3).
set -uo pipefail
MEM=1024 RATE=1 PRES="0 1 3" GAP=1 RUNFOR=3
while [ $# -gt 0 ]; do
	case $1 in
	--mem) MEM=$2; shift 2 ;;
	--rate) RATE=$2; shift 2 ;;
	--pres) PRES=$2; shift 2 ;;
	--gap) GAP=$2; shift 2 ;;
	--run) RUNFOR=$2; shift 2 ;;
	*) echo "bench: unknown option $1" >&2; exit 2 ;;
	esac
done
rows=()
FAIL=0
for pre in $PRES; do
	echo "bench: ---- $pre pre-dump(s) ----"
	out=$(bash /dirtytrack/integrations/criu/realprog.sh --pre "$pre" --mem "$MEM" --rate "$RATE" --prefill \
		--no-race-check --gap "$GAP" --run "$RUNFOR" 2>&1)
	rc=$?
	echo "$out" | sed 's/^/  /'
	[ $rc = 0 ] || FAIL=1
	res=$(grep "^realprog: result" <<<"$out")
	pre_ms=$(grep -E "^realprog: pre-dump [0-9]+ " <<<"$out" | awk '{print $(NF-3)}' | paste -sd/ -)
	v() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$res"; }
	pw=$(v pages_written); fz=$(v frozen_us); pp=$(v pages_parent)
	rows+=("$(printf '| %d | %s | %s (%s MiB) | %s | %s ms | %s ms | %s ms | %s |' "$pre" "${pre_ms:--}" \
		"$pw" "$(( ${pw:-0} * 4 / 1024 ))" "$pp" "$(( ${fz:-0} / 1000 ))" "$(v dump_ms)" "$(v restore_ms)" \
		"$([ $rc = 0 ] && echo PASS || echo FAIL)")")
done
echo
echo "bench: final dump of a ${MEM} MiB writer dirtying ${RATE} %/s, gap ${GAP} s (kernel $(uname -r))"
echo "| pre-dumps | pre-dump wall (ms) | final dump: pages written | pages from parent | frozen time | dump wall | restore wall | realprog |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit $FAIL
