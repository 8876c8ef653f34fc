#!/usr/bin/env bash
# interrupt-e2e.sh interrupts `make e2e` at random points and checks that each interrupted run
# leaves nothing behind: no process of the run (QEMU included), no VM temp dir (/tmp/qgakit-*,
# which holds the run's unix sockets and disk overlays), nothing in the run's own TMPDIR (the
# suite's qgakit-suite-* dir with the injected initramfs, Ginkgo's scratch dirs), and so no
# guest left frozen: a guest cannot outlive its QEMU. The go command's own work dir (go-build*),
# which it leaves when interrupted in the middle of a build, is named but not counted.
#
#   scripts/interrupt-e2e.sh [RUNS]        # default 10
#
# Environment: LABELS (the specs to run, default 'cmd:guest-sync': the sync specs and a freeze
# spec, so some runs are interrupted with a guest frozen), AGENT (default bin/qga), MAX_DELAY
# (seconds; each run is interrupted after a random delay below it, default 60, about one
# uninterrupted run of the default LABELS), SEED (for
# $RANDOM, to replay a sequence), KEEP_WORK=1 keeps the logs of passing runs.
#
# Runs alternate between the ways a run gets interrupted: SIGINT to the process group (^C in a
# terminal), SIGTERM to the process group (a CI runner cancelling the job, systemd stopping a
# unit), and SIGTERM to make alone (kill <pid>, which make passes on to its recipe). Each run
# is its own session, so "a process of the run" is exact: every process it started, QEMU
# included, keeps its session id, whatever process group it moved to.
#
# SIGTERM to make alone does not stop the suite: make passes it to `go tool`, which passes it to
# the ginkgo CLI, which only stops starting further suites (it leaves signalling the running
# suite to the terminal, which signals the whole group); the suite then runs to its end. Such
# runs are counted and named, not failed: nothing is left behind once they end.
#
# It exits non-zero when any run left something behind or did not end within END_TIMEOUT
# seconds of its signal (default 120), and prints what, run by run.
set -euo pipefail

cd "$(dirname "$0")/.."
runs=${1:-10}
labels=${LABELS:-cmd:guest-sync}
agent=${AGENT:-bin/qga}
max_delay=${MAX_DELAY:-60}
end_timeout=${END_TIMEOUT:-120}
RANDOM=${SEED:-$$}

work=$(mktemp -d /tmp/interrupt-e2e.XXXXXX)
echo "interrupt-e2e: $runs runs of make e2e LABELS='$labels' AGENT=$agent, interrupted within ${max_delay}s; logs in $work"

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# pids_of_session prints the pids (and names) of the processes in session $1.
pids_of_session() {
	ps -eo pid=,sid=,comm= | awk -v s="$1" '$2 == s { print $1 " " $3 }'
}

failed=0
not_stopped=0
modes=(int-group term-group term-make)
for ((run = 1; run <= runs; run++)); do
	mode=${modes[$(((run - 1) % ${#modes[@]}))]}
	delay_ms=$(((RANDOM * 32768 + RANDOM) % (max_delay * 1000)))
	delay=$((delay_ms / 1000)).$((delay_ms % 1000 / 100))
	dir=$work/run-$run
	mkdir -p "$dir/tmp"
	log=$dir/make.log
	: > "$dir/harness-pids"

	# Its own session and TMPDIR; the Go build cache is shared, so only the first run compiles.
	# A background job of a script starts with SIGINT ignored, which make and its shells would
	# keep: env gives it back its default, as in a terminal.
	TMPDIR=$dir/tmp env --default-signal=INT,QUIT setsid make e2e LABELS="$labels" AGENT="$agent" ARTIFACTS="$dir/artifacts" > "$log" 2>&1 &
	sid=$!
	start=$(now_ms)
	# Watch the session until the signal: the harness processes own the VM dirs they create.
	while (($(now_ms) < start + delay_ms)) && kill -0 "$sid" 2> /dev/null; do
		pids_of_session "$sid" | awk '$2 ~ /\.test$/ { print $1 }' >> "$dir/harness-pids"
		sleep 0.2
	done
	if ! kill -0 "$sid" 2> /dev/null; then
		echo "run $run: make e2e ended before the signal (${delay}s); raise MAX_DELAY or narrow LABELS" | tee -a "$dir/verdict"
		wait "$sid" || true
		continue
	fi
	what="$(pids_of_session "$sid" | awk '{ print $2 }' | sort | uniq -c | awk '{ printf "%s%s×%s", sep, $2, $1; sep=", " }')"
	case $mode in
	int-group) kill -INT -- "-$sid" ;;
	term-group) kill -TERM -- "-$sid" ;;
	term-make) kill -TERM "$sid" ;;
	esac

	# Wait for every process of the session to end, not only make.
	ended=no
	end_deadline=$(($(date +%s) + end_timeout))
	while (($(date +%s) < end_deadline)); do
		pids_of_session "$sid" | awk '$2 ~ /\.test$/ { print $1 }' >> "$dir/harness-pids"
		if [ -z "$(pids_of_session "$sid")" ]; then
			ended=yes
			break
		fi
		sleep 0.2
	done
	wait "$sid" 2> /dev/null || true
	took_ms=$(($(now_ms) - start - delay_ms))
	took=$((took_ms / 1000)).$((took_ms % 1000 / 100))

	problems=()
	if [ $ended = no ]; then
		problems+=("still running ${end_timeout}s after the signal: $(pids_of_session "$sid" | tr '\n' ' ')")
		kill -KILL -- "-$sid" 2> /dev/null || true
	fi
	# QEMU moves to a process group of its own but stays in the session; this finds it too.
	left=$(pids_of_session "$sid" | tr '\n' ' ')
	[ -n "$left" ] && [ $ended = yes ] && problems+=("processes left: $left")
	for d in /tmp/qgakit-*; do
		[ -f "$d/owner" ] || continue
		if grep -qxF "$(cat "$d/owner")" "$dir/harness-pids"; then
			problems+=("VM dir left: $d ($(find "$d" -mindepth 1 -maxdepth 1 -printf '%f '))")
		fi
	done
	# The go command leaves its work dir when it is interrupted in the middle of a build
	# (make agent, or Ginkgo compiling the suite): the toolchain's, noted but not counted.
	toolchain=$(find "$dir/tmp" -mindepth 1 -maxdepth 1 -name 'go-build*' -printf '%f ')
	leftovers=$(find "$dir/tmp" -mindepth 1 -maxdepth 1 ! -name 'go-build*' -printf '%f ')
	[ -n "$leftovers" ] && problems+=("TMPDIR not empty: $leftovers")

	# Not a leak, but worth knowing: the signal did not stop the run.
	note=""
	[ -n "$toolchain" ] && note=" (an interrupted go build left its work dir: $toolchain)"
	if grep -qa "SUCCESS!" "$log" && ! grep -qa "Interrupted" "$log"; then
		note="$note (the signal did not stop it: the suite ran to its end)"
		not_stopped=$((not_stopped + 1))
	fi

	if ((${#problems[@]})); then
		failed=1
		{
			echo "run $run: $mode after ${delay}s (running: $what), ended in ${took}s$note: LEFT BEHIND"
			printf '  %s\n' "${problems[@]}"
			echo "  log: $log"
		} | tee -a "$dir/verdict"
	else
		echo "run $run: $mode after ${delay}s (running: $what), everything gone ${took}s after the signal$note" | tee -a "$dir/verdict"
		[ "${KEEP_WORK:-}" = 1 ] || rm -rf "$dir"
	fi
done

if ((not_stopped)); then
	echo "interrupt-e2e: $not_stopped run(s) went on to the end after the signal (see term-make in the header)"
fi
if ((failed)); then
	echo "interrupt-e2e: some runs left things behind (logs in $work)"
	exit 1
fi
[ "${KEEP_WORK:-}" = 1 ] || rmdir "$work" 2> /dev/null || true
echo "interrupt-e2e: all $runs runs cleaned up after themselves"
