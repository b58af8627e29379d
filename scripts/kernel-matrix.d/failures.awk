# Extract why tests failed from one kernel's serial log (see
# scripts/kernel-matrix). Input: the log with carriage returns removed.
#
# The guest runs the binaries with --nocapture and shows their stderr after
# "DIRTYTRACK-MATRIX-STDERR <binary>", so every panic is in the log, tagged
# with the test's thread name:
#   thread '<test>' (<tid>) panicked at <file>:<line>:<col>:
#   <message lines>
#   stack backtrace: / note: ... / an empty line
# That survives a binary that then crashes or hangs (captured output would be
# lost with the process). Reported:
#   - the first panic of each test libtest marks "... FAILED";
#   - for a binary that ended without its "test result:" line (crash,
#     timeout, kernel panic): the first panic of every thread that has no
#     "... ok" line, including unnamed helper threads, and Rust runtime
#     messages such as "memory allocation of N bytes failed".
# Panics of passing tests (expected ones, e.g. inside catch_unwind) are not
# reported.
#
# Output: one Markdown list item per failure:
#   - `<binary>::<test>` at <file:line:col>: <message, up to 4 lines joined>

function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }

function item(t) {
    m = msg[t]
    if (length(m) > 400) m = substr(m, 1, 400) "..."
    printf "- `%s::%s`%s: %s\n", bin, t, (where[t] == "" ? "" : " at " where[t]), (m == "" ? "(no message)" : m)
}

# At the end of a binary (or of the log): print its failures, forget its state.
function finish(crashed,    i, t) {
    if (bin == "") return
    for (i = 1; i <= nfailed; i++) {
        t = failed_order[i]
        if (t in where) item(t)
        else printf "- `%s::%s`: failed (no panic message in the log)\n", bin, t
    }
    if (crashed) {
        for (i = 1; i <= npanic; i++) {
            t = panic_order[i]
            if (!(t in ok) && !(t in is_failed)) item(t)
        }
        if (runtime != "") printf "- `%s`: %s\n", bin, runtime
    }
    split("", where); split("", msg); split("", ok); split("", is_failed)
    split("", failed_order); split("", panic_order)
    nfailed = 0; npanic = 0; cur = ""; bin = ""; has_result = 0; in_stderr = 0; runtime = ""
}

/DIRTYTRACK-MATRIX-BEGIN / {
    finish(1)
    s = $0; sub(/.*DIRTYTRACK-MATRIX-BEGIN /, "", s); bin = trim(s)
    next
}
/DIRTYTRACK-MATRIX-END / { finish(!has_result); next }

bin == "" { next }

/DIRTYTRACK-MATRIX-STDERR / { in_stderr = 1; cur = ""; next }

/^(memory allocation of [0-9]+ bytes failed|fatal runtime error: )/ {
    if (runtime == "") runtime = trim($0)
    cur = ""
    next
}

!in_stderr && /^test result: / { has_result = 1; cur = ""; next }

/^thread '.*' (\([0-9]+\) )?panicked at / {
    s = $0; sub(/^thread '/, "", s); sub(/' .*/, "", s); t = s
    s = $0; sub(/.* panicked at /, "", s); sub(/:$/, "", s)
    if (t in where) { cur = ""; next }   # keep the first panic per thread
    where[t] = s; msg[t] = ""; nmsg[t] = 0; panic_order[++npanic] = t
    cur = t
    next
}

!in_stderr && /^test .* \.\.\. ok$/ {
    s = $0; sub(/^test /, "", s); sub(/ \.\.\. ok$/, "", s); ok[s] = 1; cur = ""
    next
}
!in_stderr && /^test .* \.\.\. FAILED$/ {
    s = $0; sub(/^test /, "", s); sub(/ \.\.\. FAILED$/, "", s)
    if (!(s in is_failed)) { is_failed[s] = 1; failed_order[++nfailed] = s }
    cur = ""
    next
}

# Message lines of the panic being read.
cur != "" {
    if ($0 ~ /^(stack backtrace:|note: |$)/ || $0 ~ /DIRTYTRACK-/ || nmsg[cur] >= 4) { cur = ""; next }
    msg[cur] = msg[cur] (msg[cur] == "" ? "" : " / ") trim($0); nmsg[cur]++
    next
}

END { finish(1) }
