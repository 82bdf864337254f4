#!/usr/bin/env bash
# One GPU session's measurements on a CUDA machine without Hub access (docs/PERFORMANCE.md records the numbers):
#   bash bench/h200.sh 4b|8b|bf16|pixels [4b|8b]|pixels2 [4b|8b]|score8b|px4q|final4b|qcost [size seqlen batch]|qfast|qstep|qmethods   (wheels for the missing packages in .whl/, results under $OUT)
# 4b/8b: the full shape through the pipeline (iters 1), the encoding benchmark (bf16 vs W4A16, with a profile) and,
# for 4b, the corpus cache on a 6-language task; bf16: encoding eager/compiled/threads/processes at both shapes;
# qcost: our quantize stage vs auto-round's API at the study's seqlen-1024 pairs on 2-layer real shapes; qfast:
# whether the fast settings change the weights (the default run twice: the GPU's own floor), then ours vs the API with
# the fastest settings. Each step has its own time limit; one failing does not stop the rest. Each mode fits one
# 10-minute call. Logs and JSON go to $OUT/res.tgz (refreshed after every step: the device returns 8 files at most).
set -o pipefail
MODE=${1:?4b, 8b, bf16, pixels [4b|8b], pixels2, score8b, px4q, final4b, qcost, qfast, qstep or qmethods}
OUT=${OUT:-/tmp/out}
RES=/tmp/res
mkdir -p "$OUT" "$RES"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
if ! python3 -c "import polars" 2>/dev/null; then  # mteb imports polars for its leaderboard tables only
  mkdir -p /tmp/stub/polars && printf '__version__ = "0.0.0"  # stub: mlflow and mteb skip polars features below 1.0\n\n\ndef __getattr__(name):\n    return type(name, (), {})\n' > /tmp/stub/polars/__init__.py
  export PYTHONPATH=$PYTHONPATH:/tmp/stub
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MLFLOW_ENABLE_ASYNC_LOGGING=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RES/gpu.txt"
python3 -c "import torch, transformers, auto_round, mteb; print('torch', torch.__version__, 'transformers', transformers.__version__, 'auto_round', auto_round.__version__, 'mteb', mteb.__version__)" | tee -a "$RES/gpu.txt"
rm -rf /tmp/o; python3 -m colq_sweep.fixtures --out /tmp/o/fixtures
step() {  # name timeout_s command...: one measurement; a failure or overrun is reported and the next one runs
  local name=$1 limit=$2; shift 2
  local left=$(( ${DEADLINE:-590} - SECONDS ))  # the call's 10 minutes: a step ends in time for the results to return
  [ "$left" -lt "$limit" ] && limit=$left
  [ "$limit" -lt 20 ] && { echo "== $name: skipped (${left}s left)"; return; }
  echo "== $name ($(date +%T))"
  timeout "$limit" "$@" > "$RES/$name.log" 2>&1; local rc=$?
  grep -v -E "it/s\]|s/it\]|Loading weights" "$RES/$name.log" | tail -${TAILN:-25}
  [ $rc = 0 ] || echo "!! $name exited $rc"
  tar czf "$OUT/res.tgz" -C "$RES" .
}
pipeline() {  # size iters
  local size=$1 iters=$2
  python3 -m colq_sweep.fixtures.realshape --size "$size" --out "/tmp/rs/$size" 2>&1 | tail -1
  TAILN=8 step "pipeline_$size" 420 /usr/bin/time -v python3 -m colq_sweep -m "model=colqwen3-$size" model.id=null \
    model.revision=null "model.path=/tmp/rs/$size" calib=fixture eval=fixture quant=w4a16 "iters=$iters" nsamples=16 \
    batch_size=8 seqlen=256 device=cuda outputs_dir=/tmp/o name=h200
  grep -E "quant_seconds|Elapsed|Maximum resident" "$RES/pipeline_$size.log" | tail -3
  python3 -m colq_sweep.report --name h200 --outputs-dir /tmp/o > /dev/null && cp /tmp/o/reports/h200/report.md "$RES/report_$size.md"
  key=$(ls -t /tmp/o/models | grep -E '^[0-9a-f]{20}$' | head -1)
  du -sh "/tmp/rs/$size" "/tmp/o/models/$key" | tee "$RES/sizes_$size.txt"
}
qcost() {  # size seqlen batch [flags suffix]: our stage vs auto-round's API, 2-layer real shape, iters 25
  [ -d "/tmp/rs/$1-l2" ] || python3 -m colq_sweep.fixtures.realshape --size "$1" --out "/tmp/rs/$1-l2" --layers 2 2>&1 | tail -1
  step "qcost_$1_$2_$3$5" ${QLIMIT:-300} python3 bench/quantize_cost.py --checkpoint "/tmp/rs/$1-l2" --seqlen "$2" \
    --batch-size "$3" --nsamples "$3" --iters ${ITERS:-25} $4 --json "$RES/qcost_$1_$2_$3$5.json"
}
case "$MODE" in
  4b|8b)  # the pipeline (iters 1: a real artifact quickly), encoding bf16 vs W4A16 (eager, compiled, processes)
    pipeline "$MODE" 1
    n=128; [ "$MODE" = 8b ] && n=48
    step "encode_$MODE" 300 python3 bench/encode.py --checkpoint "/tmp/rs/$MODE" --quantized "/tmp/o/models/$key" \
      --pages $n --serial-pages 8 --batch 8 --compile --process --json "$RES/encode_$MODE.json"
    [ "$MODE" = 4b ] && step corpus_cache_4b 150 python3 bench/corpus_cache.py --checkpoint /tmp/rs/4b --pages 48 \
      --queries 8 --json "$RES/corpus_cache_4b.json" ;;
  bf16)  # bf16 encoding at 4B: eager and compiled, threads and worker processes, with a profile
    python3 -m colq_sweep.fixtures.realshape --size 4b --out /tmp/rs/4b 2>&1 | tail -1
    step encode_bf16_4b 200 python3 bench/encode.py --checkpoint /tmp/rs/4b --pages 128 --serial-pages 16 --batch 8 \
      --compile --process --json "$RES/encode_bf16_4b.json" ;;
  pixels)  # eval.preprocess_device: pixels at real sizes (values, ms), then the encoder at 1700x2200 and ViDoRe's mix
    step pixels 150 python3 bench/pixels.py --checkpoint /tmp/o/fixtures/tiny-colqwen3 --json "$RES/pixels.json"
    python3 -m colq_sweep.fixtures.realshape --size "${2:-4b}" --out "/tmp/rs/${2:-4b}" 2>&1 | tail -1
    step "encode_px_${2:-4b}" 280 python3 bench/encode.py --checkpoint "/tmp/rs/${2:-4b}" --page-size 1700x2200 \
      --pages 64 --serial-pages 16 --batch 8 --queries 128 --compile --pixels pil,cuda --json "$RES/encode_px_${2:-4b}.json"
    step "encode_mix_${2:-4b}" 150 python3 bench/encode.py --checkpoint "/tmp/rs/${2:-4b}" --page-size vidore \
      --pages 64 --serial-pages 8 --batch 8 --queries 64 --pixels cuda --json "$RES/encode_mix_${2:-4b}.json" ;;
  score8b)  # where mteb scores (the encoder's similarity) at the largest v3 task's scale, then pixels at 8B
    step scoring 150 python3 bench/scoring.py --queries 1000 --pages 5043 --json "$RES/scoring.json"
    python3 -m colq_sweep.fixtures.realshape --size 8b --out /tmp/rs/8b 2>&1 | tail -1
    step encode_px_8b 300 python3 bench/encode.py --checkpoint /tmp/rs/8b --page-size 1700x2200 \
      --pages 48 --serial-pages 8 --batch 8 --queries 128 --compile --pixels pil,cuda --json "$RES/encode_px_8b.json"
    step encode_mix_8b 120 python3 bench/encode.py --checkpoint /tmp/rs/8b --page-size vidore \
      --pages 48 --serial-pages 8 --batch 8 --queries 64 --pixels cuda --json "$RES/encode_mix_8b.json" ;;
  px4q)  # 4B bf16 and W4A16 (RTN: built in a minute) with pixels=cuda, eager and compiled, the loop's profile; the GIL
    python3 -m colq_sweep.fixtures.realshape --size 4b --out /tmp/rs/4b 2>&1 | tail -1
    TAILN=4 step rtn_4b 150 python3 bench/quantize_cost.py --checkpoint /tmp/rs/4b --seqlen 256 --batch-size 8 --nsamples 8 \
      --algorithms rtn --scheme W4A16 --ours-only --keep-dir /tmp/q4 --json "$RES/rtn_4b.json"
    step encode_pxq_4b 300 python3 bench/encode.py --checkpoint /tmp/rs/4b --quantized /tmp/q4 --page-size 1700x2200 \
      --pages 48 --serial-pages 8 --batch 8 --queries 64 --compile --pixels cuda --loop-profile --json "$RES/encode_pxq_4b.json"
    step encode_pxgil_4b 100 python3 bench/encode.py --checkpoint /tmp/rs/4b --page-size 1700x2200 --switch-interval 0.0005 \
      --pages 48 --serial-pages 8 --batch 8 --queries 64 --pixels cuda --json "$RES/encode_pxgil_4b.json" ;;
  final4b)  # today's encoder at 4B: 1700x2200 pil and cuda, eager and compiled; ViDoRe's mix with cuda, compiled
    python3 -m colq_sweep.fixtures.realshape --size 4b --out /tmp/rs/4b 2>&1 | tail -1
    step encode_final_4b 260 python3 bench/encode.py --checkpoint /tmp/rs/4b --page-size 1700x2200 \
      --pages 48 --serial-pages 8 --batch 8 --queries 64 --compile --pixels pil,cuda --json "$RES/encode_final_4b.json"
    step encode_finalmix_4b 200 python3 bench/encode.py --checkpoint /tmp/rs/4b --page-size vidore \
      --pages 48 --serial-pages 8 --batch 8 --queries 64 --compile --pixels cuda --json "$RES/encode_finalmix_4b.json" ;;
  pixels2)  # where the rest of the host time goes with pixels=cuda: worker processes, and decoding left out
    python3 -m colq_sweep.fixtures.realshape --size "${2:-4b}" --out "/tmp/rs/${2:-4b}" 2>&1 | tail -1
    step "encode_pxproc_${2:-4b}" 240 python3 bench/encode.py --checkpoint "/tmp/rs/${2:-4b}" --page-size 1700x2200 \
      --pages 48 --serial-pages 8 --batch 8 --queries 64 --compile --process --pixels cuda --json "$RES/encode_pxproc_${2:-4b}.json"
    step "encode_pxnodecode_${2:-4b}" 200 python3 bench/encode.py --checkpoint "/tmp/rs/${2:-4b}" --page-size 1700x2200 \
      --pages 48 --serial-pages 8 --batch 8 --queries 64 --compile --stored none --pixels cuda --json "$RES/encode_pxnodecode_${2:-4b}.json" ;;
  qcost)  # ours vs the API (direct, ours, direct) at the study's seqlen-1024 pairs of both shapes
    if [ -n "$2" ]; then qcost "$2" "$3" "$4"  # one pair: bash bench/h200.sh qcost 8b 256 300
    else QLIMIT=240 qcost 8b 1024 50; qcost 4b 1024 80; qcost 4b 256 300; fi ;;
  qstep)  # the marginal cost of one AutoRound step at the study's largest batches: iters 10 and 40, ours alone
    for p in "8b 512 150" "4b 512 200" "8b 256 300"; do
      for it in 10 40; do ITERS=$it QLIMIT=150 qcost $p --ours-only "_it$it"; done
    done ;;
  qmethods)  # the cost side of "is SignRound worth it": RTN and optimised RTN through our stage on the full 4B shape
    python3 -m colq_sweep.fixtures.realshape --size 4b --out /tmp/rs/4b 2>&1 | tail -1
    for a in "rtn:W4A16" "rtn:W8A16" "opt_rtn:W4A16"; do
      QLIMIT=180 step "qm_4b_${a%%:*}_${a#*:}" 180 python3 bench/quantize_cost.py --checkpoint /tmp/rs/4b --seqlen 1024 \
        --batch-size 8 --nsamples 80 --algorithms "${a%%:*}" --scheme "${a#*:}" --ours-only --json "$RES/qm_4b_${a%%:*}_${a#*:}.json"
    done ;;
  qfast)  # do the fast settings change the weights? ours alone at one point: default twice, then each setting
    for v in "_lowmem:--low-gpu-mem" "_lowmem2:--low-gpu-mem" "_default:" "_compile:--compile"; do
      tag=${v%%:*}; QLIMIT=150 qcost 4b 1024 80 "--ours-only ${v#*:} --keep /tmp/w/$tag.safetensors" "$tag"
    done
    for tag in _lowmem2 _default _compile; do
      python3 bench/weights_diff.py /tmp/w/_lowmem.safetensors "/tmp/w/$tag.safetensors" --json "$RES/wdiff$tag.json"
    done
    python3 -c "import json; [print(n, json.load(open(f'$RES/qcost_4b_1024_80{n}.json'))['ours']) for n in ('_lowmem','_lowmem2','_default','_compile')]" || true
    QLIMIT=200 qcost 4b 1024 80 --compile _compilepair ;;
esac
tar czf "$OUT/res.tgz" -C "$RES" .
