#!/usr/bin/env bash
# One GPU session's measurements on a CUDA machine without Hub access (docs/PERFORMANCE.md records the numbers):
#   bash bench/h200.sh smoke|4b|8b|qcost     (wheels for the missing packages in .whl/, results under $OUT)
# smoke: 2-layer 4B shape through the whole pipeline; 4b/8b: the full shape through the pipeline (reduced iters)
# and the encoding benchmark (bf16 vs W4A16); qcost: our quantize stage vs auto-round's API on a 4-layer 4B shape.
set -eo pipefail
MODE=${1:-smoke}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
if ! python3 -c "import polars" 2>/dev/null; then  # mteb imports polars for its leaderboard tables only
  mkdir -p /tmp/stub/polars && printf '__version__ = "0.0.0"  # stub: mlflow and mteb skip polars features below 1.0\n\n\ndef __getattr__(name):\n    return type(name, (), {})\n' > /tmp/stub/polars/__init__.py
  export PYTHONPATH=$PYTHONPATH:/tmp/stub
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MLFLOW_ENABLE_ASYNC_LOGGING=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, auto_round, mteb; print('torch', torch.__version__, 'transformers', transformers.__version__, 'auto_round', auto_round.__version__, 'mteb', mteb.__version__)" | tee -a "$OUT/gpu.txt"
rm -rf /tmp/o; python3 -m colq_sweep.fixtures --out /tmp/o/fixtures
pipeline() {  # size layers iters
  local size=$1 layers=$2 iters=$3
  python3 -m colq_sweep.realshape --size "$size" --out "/tmp/rs/$size" ${layers:+--layers $layers} 2>&1 | tail -1
  /usr/bin/time -v python3 -m colq_sweep -m "model=colqwen3-$size" model.id=null model.revision=null "model.path=/tmp/rs/$size" \
    calib=fixture eval=fixture quant=w4a16 "iters=$iters" nsamples=16 batch_size=8 seqlen=256 device=cuda \
    outputs_dir=/tmp/o name=h200 > "$OUT/pipeline_$size.log" 2> "$OUT/pipeline_$size.err" || { ls -la /tmp/o/models/*; grep -v "it/s]" "$OUT/pipeline_$size.err" | tail -30; exit 1; }
  grep -A5 "colq_sweep summary" "$OUT/pipeline_$size.err" || true
  grep -E "Elapsed|Maximum resident" "$OUT/pipeline_$size.err" || true
}
case "$MODE" in
  smoke) pipeline 4b 2 5 ;;
  4b|8b)
    pipeline "$MODE" "" 10
    python3 -m colq_sweep.report --name h200 --outputs-dir /tmp/o > /dev/null && cp /tmp/o/reports/h200/report.md "$OUT/report_$MODE.md"
    key=$(ls -t /tmp/o/models | grep -E '^[0-9a-f]{20}$' | head -1)
    du -sh "/tmp/rs/$MODE" "/tmp/o/models/$key" | tee "$OUT/sizes_$MODE.txt"; ls -la "/tmp/o/models/$key" >> "$OUT/sizes_$MODE.txt"
    python3 bench/encode.py --checkpoint "/tmp/rs/$MODE" --quantized "/tmp/o/models/$key" --pages 64 --batch 8 \
      --json "$OUT/encode_$MODE.json" ;;
  qcost)
    python3 -m colq_sweep.realshape --size 4b --out /tmp/rs/4b-l4 --layers 4 2>&1 | tail -1
    python3 bench/quantize_cost.py --checkpoint /tmp/rs/4b-l4 --seqlen 1024 --batch-size 8 --nsamples 16 --iters 50 \
      --json "$OUT/qcost_default.json" 2>&1 | grep -v "it/s\]" | tail -30
    python3 bench/quantize_cost.py --checkpoint /tmp/rs/4b-l4 --seqlen 1024 --batch-size 8 --nsamples 16 --iters 50 \
      --compile --no-low-gpu-mem --json "$OUT/qcost_fast.json" 2>&1 | grep -v "it/s\]" | tail -30 ;;
esac
