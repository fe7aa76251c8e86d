#!/usr/bin/env bash
# Every model through colorizer.bench on this machine; one bench.json per line of the table.
#   bash experiments/benchmarks/run.sh OUT_DIR [extra Hydra overrides, e.g. trainer=gpu]
# PHOTOS=DIR adds the data-path rows on a folder of ~1024 px JPEGs (the shared photos).
set -euo pipefail
out=${1:?usage: run.sh OUT_DIR [overrides]}
shift
python=${PYTHON:-.venv/bin/python}
run() {  # run NAME overrides...
  local name=$1
  shift
  "$python" -m colorizer.bench "$@" "hydra.run.dir=$out/$name" > "$out/$name.log" 2>&1
  echo "$name: $(grep -o '"lightning_overhead": [0-9.]*' "$out/$name/bench.json"), \
$(grep -o '"data_speedup": [0-9.]*' "$out/$name/bench.json")"
}
mkdir -p "$out"
run alpha model=alpha "$@"
run beta model=beta "$@"
run fullcnn model=fullcnn steps=5 repeats=3 "$@"
run gan model=gan data.image_size=256 warmup=2 steps=4 repeats=3 "$@"
run alpha_256 model=alpha data.image_size=256 "$@"
if [ -n "${PHOTOS:-}" ]; then
  run alpha_photos model=alpha "data.root=$PHOTOS" "$@"
  run alpha_photos_256 model=alpha "data.root=$PHOTOS" data.image_size=256 "$@"
fi
