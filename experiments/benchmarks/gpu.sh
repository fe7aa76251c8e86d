#!/usr/bin/env bash
# The GPU rows of the benchmark: every model at 256², batch 64, bf16-mixed (trainer=gpu), eager
# then the data path on a folder of photographs, then each model with compile=true
# channels_last=true (compiling takes longest, so last).
#   bash experiments/benchmarks/gpu.sh OUT_DIR [PHOTOS_DIR]
# Each run is capped (BENCH_TIMEOUT seconds, default 150) so one slow compile cannot take the
# others' time; a capped run leaves its log and no bench.json.
set -uo pipefail
out=${1:?usage: gpu.sh OUT_DIR [PHOTOS_DIR]}
photos=${2:-}
python=${PYTHON:-python3}
limit=${BENCH_TIMEOUT:-150}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

run() {  # run NAME overrides...
  local name=$1 start
  shift
  start=$(date +%s)
  timeout "$limit" "$python" -m colorizer.bench trainer=gpu "$@" "hydra.run.dir=$out/$name" \
    > "$out/$name.log" 2>&1
  echo "$name: exit $? after $(( $(date +%s) - start )) s"
}

synthetic=(data=synthetic data.image_size=256 data.batch_size=64 data.num_train=64
           data.num_workers=4 repeats=3)
fast=(compile=true channels_last=true)
for model in alpha beta gan fullcnn; do
  run "$model" "model=$model" "${synthetic[@]}"
done
if [ -n "$photos" ]; then  # the data path: ~1024 px JPEGs decoded by 8 workers
  run alpha_photos_256 model=alpha "data.root=$photos" data.image_size=256 data.batch_size=8 \
    data.num_workers=8 repeats=3
fi
for model in alpha beta gan fullcnn; do
  run "${model}_compiled" "model=$model" "${synthetic[@]}" "${fast[@]}"
done
