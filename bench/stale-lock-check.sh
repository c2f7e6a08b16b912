#!/usr/bin/env bash
# A worker killed during a real JIT extension build, then more points: nothing hangs, nothing is left running.
#
#   bash bench/stale-lock-check.sh            # about 3-5 minutes on 2 CPU cores
#
# 1. A fresh TORCH_EXTENSIONS_DIR. Point A offloads its optimizer to the CPU, so DeepSpeed JIT-builds its CPU Adam
#    extension in the worker; the point's timeout (20 s) kills the worker mid-build.
# 2. No compiler, ninja or worker process may be left, and the build's lock file is left behind (stale).
# 3. Point B (no offload) must complete at once: it needs no extension.
# 4. Point A again, with time to build: the stale lock is removed with one line and the build completes.
set -uo pipefail
cd "$(dirname "$0")/.."
ext=$(mktemp -d /tmp/ovprof-lockcheck-XXXX)
out=$ext/store.jsonl
export TORCH_EXTENSIONS_DIR=$ext/extensions
tiny=(--set vocab_size=512 --set caption_len=16 --set text_len=8 --batch 2 --steps 1 --warmup 1 --out "$out")
cat > "$ext/offload.json" <<'JSON'
{"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
 "optimizer": {"type": "Adam", "params": {"lr": 1e-4}}}
JSON
fail() { echo "FAIL: $*"; exit 1; }

echo "== 1. point A, killed mid-build (timeout 20 s)"
ovprof run "${tiny[@]}" --ds-config "$ext/offload.json" --timeout 20 >"$ext/a1.log" 2>&1
echo "exit $? (4 = timeout)"; tail -2 "$ext/a1.log"
echo "== 2. leftovers"
sleep 1
left=$(pgrep -fa "cpu_adam|ninja|cc1plus|ovprof.runner.worker" | grep -v pgrep || true)
[ -z "$left" ] || fail "processes left: $left"
echo "no compiler, ninja or worker process left"
ls "$TORCH_EXTENSIONS_DIR"/*/lock 2>/dev/null && echo "(the killed build's lock is there)" || echo "(no lock left)"
echo "== 3. point B, no extension needed"
start=$(date +%s)
timeout 300 ovprof run "${tiny[@]}" --timeout 120 >"$ext/b.log" 2>&1 || fail "point B: $(tail -3 "$ext/b.log")"
echo "point B ok in $(( $(date +%s) - start )) s"
echo "== 4. point A again, time to build"
start=$(date +%s)
timeout 900 ovprof run "${tiny[@]}" --ds-config "$ext/offload.json" --timeout 600 >"$ext/a2.log" 2>&1 \
  || fail "point A again: $(tail -3 "$ext/a2.log")"
grep -h "stale extension build lock" "$ext/a2.log" || echo "(no stale lock to remove)"
echo "point A ok in $(( $(date +%s) - start )) s, including the build"
left=$(pgrep -fa "cpu_adam|ninja|cc1plus|ovprof.runner.worker" | grep -v pgrep || true)
[ -z "$left" ] || fail "processes left: $left"
echo "PASS ($ext)"
