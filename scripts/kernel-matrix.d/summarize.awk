# Summarize one kernel's serial log (see scripts/kernel-matrix and the guest
# /init in this directory). Input: the log with carriage returns removed.
# Variables (-v): test_timeout = per-binary guest timeout in seconds;
#                expected = space-separated names of the binaries in /tests.
#
# Output: one "key<TAB>value" line per result, read by scripts/kernel-matrix:
#   booted     1 if the guest init printed its UNAME marker, else 0
#   uname      kernel release reported by the guest
#   done       1 if the guest printed its DONE marker
#   mode       what Mode::Auto chose, from the DIRTYTRACK-MODE lines (see
#              below); "?" if that cannot be told
#   passed, failed, ignored   sums of libtest "test result:" lines; for a
#              binary that never printed one (killed, crashed), its
#              "test ... ok" / "... ignored" lines are counted instead; a
#              program (END line with kind=program) counts as one test
#   skipped    number of distinct <binary>::<test> with a DIRTYTRACK-SKIP line
#   skip_reasons   distinct skip reasons, "; " separated
#   failures   failing tests, and binaries that crashed, did not finish or
#              never started, "; " separated. Each such binary also counts
#              as one failure in "failed".
#   panic      the first "Kernel panic" line, if any
#   oops       number of kernel BUG/Oops/WARNING/Call Trace lines
#   warn       init's DIRTYTRACK-MATRIX-WARN lines, "; " separated
#
# Marker lines are matched anywhere in a line, not only at its start: kernel
# messages on the same console can be glued in front of them.

function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s); return s }
function add_list(list, item) { return list == "" ? item : list "; " item }

BEGIN {
    booted = 0; done = 0; passed = 0; failed = 0; ignored = 0
    nskip = 0; nreasons = 0; nmodes = 0; nauto = 0; oops = 0
    cur = ""; failures = ""; panic = ""; warn = ""; uname = ""
    if (test_timeout == "") test_timeout = 0
}

/DIRTYTRACK-MATRIX-UNAME / {
    booted = 1
    s = $0; sub(/.*DIRTYTRACK-MATRIX-UNAME /, "", s); uname = trim(s)
    next
}

/DIRTYTRACK-MATRIX-WARN / {
    s = $0; sub(/.*DIRTYTRACK-MATRIX-WARN /, "", s); warn = add_list(warn, trim(s))
    next
}

/DIRTYTRACK-MATRIX-BEGIN / {
    s = $0; sub(/.*DIRTYTRACK-MATRIX-BEGIN /, "", s)
    cur = trim(s); began[cur] = 1; order[++nbin] = cur; has_result[cur] = 0
    in_stderr = 0
    next
}

# The binary's stderr, shown after it ended. libtest's own lines are on
# stdout: below, "test ..." lines are only read outside this section.
/DIRTYTRACK-MATRIX-STDERR / { in_stderr = 1; next }

# Rust runtime messages explaining a crash (abort).
in_stderr && /^(memory allocation of [0-9]+ bytes failed|fatal runtime error: )/ {
    if (cur != "" && crashmsg[cur] == "") crashmsg[cur] = trim($0)
    next
}

/DIRTYTRACK-MATRIX-END / {
    s = $0; sub(/.*DIRTYTRACK-MATRIX-END /, "", s)
    split(trim(s), f, " ")
    name = f[1]; rc = f[2]; secs = f[3]
    sub(/^rc=/, "", rc); sub(/^secs=/, "", secs)
    ended[name] = 1
    # A program (/programs, not a libtest harness) is one check: exit
    # status 0 passes, anything else fails.
    if (f[4] == "kind=program") {
        if (rc == 0) passed++
        else {
            failed++
            failures = add_list(failures, name ": exit status " rc " after " secs " s")
        }
        cur = ""; in_stderr = 0
        next
    }
    if (has_result[name]) {
        passed += res_p[name]; failed += res_f[name]; ignored += res_i[name]
    } else {
        passed += ok_count[name]; ignored += ign_count[name]
    }
    if (rc == 101 && has_result[name]) {
        # libtest's normal "some tests failed" status: the failing tests
        # were already listed from their "... FAILED" lines.
    } else if (rc != 0) {
        if (rc == 137 && test_timeout > 0 && secs + 0 >= test_timeout)
            why = "killed after the " test_timeout " s guest timeout"
        else if (rc > 128)
            why = "died of signal " (rc - 128) " after " secs " s"
        else
            why = "exit status " rc
        # A binary that crashed before its "test result:" line has no failed
        # count of its own: count it as one failure.
        if (!has_result[name]) failed++
        if (!has_result[name] && slow[name] != "") why = why " (running for over 60 s: " slow[name] ")"
        if (crashmsg[name] != "") why = why " (" crashmsg[name] ")"
        if (kmsg[name] != "") why = why " (kernel: " kmsg[name] ")"
        failures = add_list(failures, name ": " why)
    } else if (!has_result[name]) {
        failures = add_list(failures, name ": exit 0 but no libtest summary")
        failed++
    }
    cur = ""; in_stderr = 0
    next
}

/DIRTYTRACK-MATRIX-DONE/ { done = 1; next }

# Kernel messages logged while a binary ran. A fatal signal's "segfault at"
# / "traps:" line explains a crash: keep the first one per binary.
/DIRTYTRACK-MATRIX-DMESG / {
    s = $0; sub(/.*DIRTYTRACK-MATRIX-DMESG /, "", s); sub(/^<[0-9]+>(\[[ 0-9.]+\] )?/, "", s)
    if (cur != "" && kmsg[cur] == "" && s ~ /(segfault at|traps:|general protection|invalid opcode)/) kmsg[cur] = trim(s)
    if (s ~ /(BUG: |Oops: |WARNING: CPU|WARNING: .* at |general protection fault|Call Trace:)/) oops++
    next
}

# libtest: "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; ..."
# Only the last such line of a binary counts (added at its END marker): a
# test that re-runs its own binary in a child process may let the child's
# summary through, and the parent's own summary always comes last.
/test result: (ok|FAILED)\. [0-9]+ passed; [0-9]+ failed; [0-9]+ ignored/ {
    if (cur == "" || in_stderr) next
    s = $0; sub(/.*test result: (ok|FAILED)\. /, "", s)
    split(s, f, /; /)
    p = f[1]; sub(/ passed.*/, "", p)
    x = f[2]; sub(/ failed.*/, "", x)
    ig = f[3]; sub(/ ignored.*/, "", ig)
    res_p[cur] = p + 0; res_f[cur] = x + 0; res_i[cur] = ig + 0
    has_result[cur] = 1
    next
}

# libtest: "test some::name has been running for over 60 seconds" names the
# likely culprit when a binary is killed or the guest dies.
# libtest per-test lines, counted only for binaries without a summary.
/^test .* \.\.\. ok$/ { if (cur != "" && !in_stderr) ok_count[cur]++; next }
/^test .* \.\.\. ignored/ { if (cur != "" && !in_stderr) ign_count[cur]++; next }

/^test .* has been running for over 60 seconds/ {
    s = $0; sub(/^test /, "", s); sub(/ has been running for over 60 seconds.*/, "", s)
    if (cur != "") slow[cur] = (slow[cur] == "" ? "" : slow[cur] ", ") s
    next
}

# libtest: "test some::name ... FAILED"
/^test .* \.\.\. FAILED$/ {
    if (in_stderr) next
    s = $0; sub(/^test /, "", s); sub(/ \.\.\. FAILED$/, "", s)
    failures = add_list(failures, (cur == "" ? "" : cur "::") s)
    next
}

# Library markers: "DIRTYTRACK-SKIP: <test> <reason>" and "DIRTYTRACK-MODE: <mode>".
/DIRTYTRACK-SKIP:/ {
    s = $0; sub(/.*DIRTYTRACK-SKIP:[ \t]*/, "", s); s = trim(s)
    test = s; sub(/[ \t].*/, "", test)
    reason = substr(s, length(test) + 1)
    sub(/[:,]$/, "", test)
    reason = trim(reason); sub(/^[-:,]+[ \t]*/, "", reason); reason = trim(reason)
    if (reason == "") reason = "(no reason given)"
    key = cur "::" test
    if (!(key in skipped_tests)) { skipped_tests[key] = 1; nskip++ }
    if (!(reason in reasons)) { reasons[reason] = 1; reason_order[++nreasons] = reason }
    next
}

# Two shapes are understood (case-insensitive):
#   "DIRTYTRACK-MODE: async"          the mode of some tracker (maybe forced)
#   "DIRTYTRACK-MODE: auto -> async"  (or "auto=async", "auto: async") what
#                                     Mode::Auto resolved to
/DIRTYTRACK-MODE:/ {
    s = $0; sub(/.*DIRTYTRACK-MODE:[ \t]*/, "", s); s = tolower(trim(s))
    if (s ~ /^auto[^a-z]+[a-z]/) {
        sub(/^auto[^a-z]+/, "", s); sub(/[^a-z].*/, "", s)
        if (!(s in auto_modes)) { auto_modes[s] = 1; auto_order[++nauto] = s }
    } else {
        sub(/[^a-z].*/, "", s)
        if (s != "" && !(s in modes)) { modes[s] = 1; mode_order[++nmodes] = s }
    }
    next
}

/Kernel panic - not syncing/ {
    if (panic == "") { s = $0; sub(/.*Kernel panic/, "Kernel panic", s); panic = trim(s) }
    next
}

/(BUG: |Oops: |WARNING: CPU|general protection fault|Call Trace:)/ { oops++ }

END {
    # Binaries that started but never printed their END marker, then
    # binaries that never started (the guest died or hung before them).
    for (i = 1; i <= nbin; i++) {
        b = order[i]
        if (!(b in ended)) {
            failed++
            passed += ok_count[b]; ignored += ign_count[b]
            why = "did not finish"
            if (slow[b] != "") why = why " (running for over 60 s: " slow[b] ")"
            failures = add_list(failures, b ": " why)
        }
    }
    nexp = split(expected, exp_list, " ")
    notrun = ""
    for (i = 1; i <= nexp; i++) {
        if (!(exp_list[i] in began)) {
            failed++
            notrun = notrun (notrun == "" ? "" : ", ") exp_list[i]
        }
    }
    if (notrun != "") failures = add_list(failures, "not run: " notrun)
    # The Auto choice if printed; else the one mode seen (nothing else ran
    # there, so Auto cannot have picked anything else); else "?" with the
    # modes seen.
    # Sort the modes seen, for a stable table (the order of the lines
    # depends on test scheduling).
    for (i = 2; i <= nmodes; i++)
        for (j = i; j > 1 && mode_order[j - 1] > mode_order[j]; j--) {
            tmp = mode_order[j]; mode_order[j] = mode_order[j - 1]; mode_order[j - 1] = tmp
        }
    mode = ""; seen = ""
    for (i = 1; i <= nauto; i++) mode = mode (mode == "" ? "" : ",") auto_order[i]
    for (i = 1; i <= nmodes; i++) seen = seen (seen == "" ? "" : ", ") mode_order[i]
    if (mode == "" && nmodes == 1) mode = seen
    else if (mode == "" && nmodes > 1) mode = "? (seen: " seen ")"
    else if (mode == "") mode = "?"
    sr = ""
    for (i = 1; i <= nreasons; i++) sr = add_list(sr, reason_order[i])

    printf "booted\t%d\n", booted
    printf "uname\t%s\n", uname
    printf "done\t%d\n", done
    printf "mode\t%s\n", mode
    printf "passed\t%d\n", passed
    printf "failed\t%d\n", failed
    printf "ignored\t%d\n", ignored
    printf "skipped\t%d\n", nskip
    printf "skip_reasons\t%s\n", sr
    printf "failures\t%s\n", failures
    printf "binaries\t%d\n", nbin
    printf "panic\t%s\n", panic
    printf "oops\t%d\n", oops
    printf "warn\t%s\n", warn
}
