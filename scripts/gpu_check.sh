#!/usr/bin/env bash
# minicnn's checks on a machine with one NVIDIA GPU, in at most about 8 minutes; or, with
# --dry-run, the same steps on the CPU (NumPy standing in for CuPy), to check the script itself.
#
#   bash scripts/gpu_check.sh OUTDIR             # on the GPU machine, from a copy of the checkout
#   bash scripts/gpu_check.sh --dry-run OUTDIR   # anywhere: every step on the CPU, small sizes
#
# It runs in the checkout that holds it (python -m minicnn from there: no install needed) and
# needs python with numpy, tqdm and pytest; on the GPU machine also CuPy and PyTorch (CUDA).
# MNIST must be in the data folder: $MINICNN_DATA when set (a folder holding mnist/), else the
# checkout's git-ignored datasets/. Fill that from the team's shared copy before carrying the
# working tree to the GPU machine (with the device tool: carry ["datasets/mnist"]):
#
#   mkdir -p datasets/mnist && cp ../shared/datasets/mnist/* datasets/mnist/
#
# Steps, in this order (the measurements first, the whole test suite last with the time left);
# each writes OUTDIR/<step>.log, and OUTDIR/figures.json is rewritten after every step with
# each step's status ("ok", "failed", "timeout" or "skipped: <why>"), exit status, seconds,
# command, log and figures. A failed step is recorded and the next one runs.
#
#   nvidia_smi  nvidia-smi                                      dry run: skipped: needs a GPU
#   train       minicnn train --backend cupy --epochs 1 --out OUTDIR/run
#                                                dry run: --backend numpy --limit 2000, 1000 tests
#   evaluate    minicnn evaluate OUTDIR/run --backend numpy     (the GPU-trained checkpoint on
#                                                the CPU; its accuracy against train's)
#   bench       minicnn bench --backends numpy,cupy --compare torch --json OUTDIR/bench.json
#                                                dry run: --backends numpy, 3 steps, batch 16
#   sweep       minicnn bench --sweep batch=1,8,32,128,512 --backends numpy,cupy
#                                                --json OUTDIR/sweep.json
#                                                dry run: --backends numpy, batch=1,8,32, 2 steps
#   pytest      MINICNN_BACKEND=cupy python -m pytest -q        dry run: MINICNN_BACKEND=numpy,
#                                                -m "not slow"
#
# TF32 is off on both sides: CUPY_TF32=0 for CuPy (exported here), and the bench's PyTorch CUDA
# runner turns it off itself, with cudnn.benchmark on (minicnn/tools/bench/torch_twin.py).
#
# Environment:
#   MINICNN_DATA          the data folder holding mnist/ (default: the checkout's datasets/)
#   GPU_CHECK_SKIP_PYTEST=1  skip the pytest step (the test of this script sets it)
#   GPU_CHECK_ONLY        comma-separated steps to run (e.g. bench,sweep for a rerun); the others
#                         are recorded as skipped
#   GPU_CHECK_BUDGET_S    seconds for the whole script (default 450); each step gets at most its
#                         own cap and what is left, and is skipped when under 10 s are left
#   PYTHON                the interpreter (default: python)
#
# Exit status: 0 when no step failed or timed out (skipped steps are fine), else 1; 2 for a
# usage error.
set -u

usage() { echo "usage: bash scripts/gpu_check.sh [--dry-run] OUTDIR" >&2; exit 2; }
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
[ $# -eq 1 ] || usage
case "$1" in -*) usage ;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python}
DATA=${MINICNN_DATA:-$ROOT/datasets}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
FIGURES="$OUT/figures.json"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export CUPY_TF32=0
export PYTHONUNBUFFERED=1
FAILED=0
rm -f "$FIGURES"

if ls "$DATA"/mnist/train-images-idx3-ubyte* "$DATA"/mnist/t10k-images-idx3-ubyte* \
        >/dev/null 2>&1; then
    HAVE_MNIST=1
    export MINICNN_DATA="$DATA"
else
    HAVE_MNIST=0
    unset MINICNN_DATA
fi
NO_MNIST="skipped: no MNIST in $DATA/mnist (fill it: mkdir -p datasets/mnist && cp ../shared/datasets/mnist/* datasets/mnist/)"

# json_helper ACTION ARGS...: the JSON bookkeeping, in Python (figures.json written atomically).
json_helper() {
    "$PY" - "$@" <<'PY'
import json, os, re, sys

action, path, *args = sys.argv[1:]
doc = {}
if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)


def save():
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, path)


def load(name):
    with open(os.path.join(os.path.dirname(path), name), encoding="utf-8") as f:
        return json.load(f)


def read(name):
    with open(os.path.join(os.path.dirname(path), name), encoding="utf-8",
              errors="replace") as f:
        return f.read()


def figures(step):
    """The figures of one step, from its log or the JSON it wrote."""
    if step == "nvidia_smi":
        rows = [r for r in read("nvidia_smi.log").splitlines() if r.startswith("gpu: ")]
        return {"gpu": rows[0][5:] if rows else None}
    if step == "pytest":
        lines = [ln.strip(" =") for ln in read("pytest.log").splitlines()
                 if re.search(r"\d+ (passed|failed|skipped|errors?|deselected)", ln)
                 and " in " in ln]
        if not lines:
            return {"summary": None}
        counts = {k: int(n) for n, k in re.findall(r"(\d+) ([a-z]+)", lines[-1].split(" in ")[0])}
        return {"summary": lines[-1], **{k: counts.get(k, 0) for k in
                                         ("passed", "failed", "skipped", "errors")},
                "other_counts": {k: v for k, v in counts.items()
                                 if k not in ("passed", "failed", "skipped", "errors", "error")}}
    if step == "train":
        last = json.loads(read("run/metrics.jsonl").strip().splitlines()[-1])
        backend = re.search(r"backend (\w+)\)", read("train.log"))
        return {"backend": backend.group(1) if backend else None,
                "test_accuracy": last.get("test_acc"), "val_accuracy": last.get("val_acc"),
                "epoch_seconds": last.get("seconds"), "images_per_s": last.get("images_per_s")}
    if step == "evaluate":
        m = re.search(r"accuracy ([\d.]+)% \((\d+)/(\d+)\)", read("evaluate.log"))
        out = {"test_accuracy": int(m.group(2)) / int(m.group(3)) if m else None,
               "images": int(m.group(3)) if m else None}
        train = doc.get("steps", {}).get("train", {}).get("test_accuracy")
        if out["test_accuracy"] is not None and train is not None:
            out["difference_from_train"] = out["test_accuracy"] - train
        return out
    if step == "bench":
        report = load("bench.json")
        out = {"unavailable": report.get("unavailable", {}),
               "cupy_tf32": report["config"].get("cupy_tf32"), "speedup": report.get("speedup")}
        for b, res in report["results"].items():
            for who in ("minicnn", "minicnn_hand_loop", "torch"):
                if who in res:
                    f = res[who]
                    out[f"{b}_{who}"] = {k: f.get(k) for k in (
                        "step_s_median", "train_img_s", "infer_img_s", "device",
                        "cuda_settings", "train_gpu_pool_mib") if f.get(k) is not None}
            if "ratio" in res:
                out[f"{b}_minicnn_vs_torch_step"] = res["ratio"]["fit step"]["step_s_median"]
        return out
    if step == "sweep":
        sweep = load("sweep.json")["sweep"]
        out = {"crossover": sweep["crossover"], "crossover_batch": sweep["crossover_batch"],
               "unavailable": sweep.get("unavailable", {})}
        for b, res in sweep["results"].items():
            rows = {}
            for r in res["batches"]:
                row = {"step_ms": 1000 * r["step_s_median"], "img_s": r["train_img_s"]}
                for kind in ("host_ms", "device_ms"):    # CuPy's split, summed over the layers
                    if "total_" + kind in r["layers"][0]:
                        row["layers_" + kind] = sum(x["total_" + kind] for x in r["layers"])
                rows[str(r["batch_size"])] = row
            out[b] = rows
        return out
    return {}


if action == "start":
    mode, root, data, have_mnist, budget, started = args
    doc = {"mode": mode, "root": root, "data": data, "data_has_mnist": have_mnist == "1",
           "budget_s": int(budget), "started_utc": started, "steps": {}}
    save()
elif action == "step":
    step, status, rc, start, end, command = args
    entry = {"status": status, "exit_status": None if rc == "" else int(rc),
             "seconds": round(float(end) - float(start), 1) if start else None,
             "command": command, "log": f"{step}.log"}
    if status in ("ok", "failed", "timeout"):
        try:
            entry.update(figures(step))
        except Exception as exc:   # a missing or malformed output: say so, keep going
            if status == "ok":     # (a step that failed may well have written nothing)
                entry["figures_error"] = f"{type(exc).__name__}: {exc}"
    doc.setdefault("steps", {})[step] = entry
    save()
    brief = {k: v for k, v in entry.items() if k in (
        "summary", "test_accuracy", "crossover", "figures_error", "difference_from_train")}
    print(f"gpu_check: {step}: {status}" + (f" (exit {rc}, {entry['seconds']} s)" if rc else "")
          + "".join(f"; {k}: {v}" for k, v in brief.items()), flush=True)
elif action == "finish":
    finished, seconds, failed = args
    doc.update(finished_utc=finished, seconds=int(seconds), all_ok=failed == "0")
    save()
PY
}

# quote WORDS...: the words as one shell-quoted command line, for the logs and the JSON.
quote() { local s; s=$(printf '%q ' "$@"); printf '%s' "${s% }"; }

# wanted NAME: true unless GPU_CHECK_ONLY is set and leaves NAME out.
wanted() { [ -z "${GPU_CHECK_ONLY:-}" ] || [[ ",$GPU_CHECK_ONLY," == *",$1,"* ]]; }

# step NAME CAP_S COMMAND...: run COMMAND with its output in OUTDIR/NAME.log, under a timeout of
# CAP_S seconds or what is left of the budget, and record it.
step() {
    local name=$1 cap=$2 log="$OUT/$1.log" left rc status start end
    shift 2
    if ! wanted "$name"; then
        skip "$name" "skipped: not in GPU_CHECK_ONLY=$GPU_CHECK_ONLY" "$(quote "$@")"
        return
    fi
    left=$((BUDGET - SECONDS))
    [ "$cap" -lt "$left" ] || cap=$left
    if [ "$cap" -lt 10 ]; then
        skip "$name" "skipped: out of time (budget ${BUDGET} s)" "$(quote "$@")"
        return
    fi
    {
        echo "# gpu_check step $name: $(quote "$@")"
        echo "# started $(date -u +%FT%TZ), timeout ${cap} s"
    } >"$log"
    start=$(date +%s.%N)
    timeout -k 15 -s INT "$cap" "$@" >>"$log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    case $rc in
        0) status=ok ;;
        124) status=timeout; FAILED=1 ;;
        *) status=failed; FAILED=1 ;;
    esac
    echo "# exit status $rc ($status)" >>"$log"
    json_helper step "$FIGURES" "$name" "$status" "$rc" "$start" "$end" "$(quote "$@")"
}

# skip NAME WHY [COMMAND]: record a step that does not run, its log saying why.
skip() {
    printf '# gpu_check step %s: %s\n%s\n' "$1" "${3:-}" "$2" >"$OUT/$1.log"
    json_helper step "$FIGURES" "$1" "$2" "" "" "" "${3:-}"
}

MINICNN=("$PY" -m minicnn)
json_helper start "$FIGURES" "$([ $DRY = 1 ] && echo dry-run || echo gpu)" "$ROOT" "$DATA" \
    "$HAVE_MNIST" "$BUDGET" "$(date -u +%FT%TZ)"
echo "gpu_check: $([ $DRY = 1 ] && echo 'dry run on the CPU' || echo 'on the GPU'), logs and figures.json in $OUT"

if [ $DRY = 1 ]; then
    skip nvidia_smi "skipped: needs a GPU" "nvidia-smi"
    TRAIN_ARGS=(--backend numpy --epochs 1 --limit 2000 --test-limit 1000)
    EVAL_ARGS=(--limit 1000)
    BENCH_ARGS=(--backends numpy --compare torch --steps 3 --warmup 1 --batch-size 16
                --infer-batch-size 64 --infer-steps 1 --pause 0.05)
    SWEEP_ARGS=(--backends numpy --sweep batch=1,8,32 --steps 2 --warmup 1)
    PYTEST=(env MINICNN_BACKEND=numpy "$PY" -m pytest -q -p no:cacheprovider -m "not slow")
else
    step nvidia_smi 30 bash -c 'nvidia-smi && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed "s/^/gpu: /"'
    TRAIN_ARGS=(--backend cupy --epochs 1)
    EVAL_ARGS=()
    BENCH_ARGS=(--backends numpy,cupy --compare torch)
    SWEEP_ARGS=(--backends numpy,cupy --sweep batch=1,8,32,128,512)
    PYTEST=(env MINICNN_BACKEND=cupy "$PY" -m pytest -q -p no:cacheprovider -rfEs)
fi

if [ $HAVE_MNIST = 1 ]; then
    if wanted train; then rm -rf "$OUT/run"; fi     # a fresh run (train refuses a finished one)
    step train 120 "${MINICNN[@]}" train "${TRAIN_ARGS[@]}" --out "$OUT/run" --data-root "$DATA" \
        --quiet
    if [ -f "$OUT/run/model.npz" ]; then
        step evaluate 60 "${MINICNN[@]}" evaluate "$OUT/run" --backend numpy --data-root "$DATA" \
            ${EVAL_ARGS[@]+"${EVAL_ARGS[@]}"}
    else
        skip evaluate "skipped: train wrote no checkpoint" "minicnn evaluate $OUT/run --backend numpy"
    fi
else
    skip train "$NO_MNIST" "minicnn train"
    skip evaluate "$NO_MNIST" "minicnn evaluate"
fi
for name in bench sweep; do    # a failed step must not leave an older run's figures behind
    if wanted $name; then rm -f "$OUT/$name.json"; fi
done
step bench 150 "${MINICNN[@]}" bench "${BENCH_ARGS[@]}" --json "$OUT/bench.json"
step sweep 120 "${MINICNN[@]}" bench "${SWEEP_ARGS[@]}" --json "$OUT/sweep.json"
if [ "${GPU_CHECK_SKIP_PYTEST:-0}" = 1 ]; then
    skip pytest "skipped: GPU_CHECK_SKIP_PYTEST=1" "$(quote "${PYTEST[@]}")"
else
    step pytest 300 "${PYTEST[@]}"
fi

json_helper finish "$FIGURES" "$(date -u +%FT%TZ)" "$SECONDS" "$FAILED"
echo "gpu_check: done in ${SECONDS} s; $([ $FAILED = 0 ] && echo 'no step failed' || echo 'some step failed or timed out'): $FIGURES"
exit $FAILED
