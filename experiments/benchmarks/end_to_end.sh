#!/usr/bin/env bash
# Whole runs as users start them: colorizer.bench's end-to-end row (a real colorizer.run
# training: files read by the data source, every callback, checkpoints, CSV logger) next to the
# step alone, for the four models, on the embedded photos and on a 14-photo folder.
#   bash experiments/benchmarks/end_to_end.sh OUT_DIR PHOTOS_DIR [extra Hydra overrides]
# PHOTOS_DIR: a folder of ~1024 px JPEGs with a train/ subfolder (the shared photographs); the
# 14-photo folder is the first 14 of PHOTOS_DIR/train in name order, copied to OUT_DIR/photos14
# (2 of them grayscale are skipped: 12 used, split 8 train / 2 val / 2 test).
# Each line prints run_efficiency = end-to-end images/s / the step alone.
set -euo pipefail
out=${1:?usage: end_to_end.sh OUT_DIR PHOTOS_DIR [overrides]}
photos=${2:?usage: end_to_end.sh OUT_DIR PHOTOS_DIR [overrides]}
shift 2
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out/photos14"
find "$photos/train" -maxdepth 1 -type f | sort | head -n 14 | xargs -I{} cp {} "$out/photos14/"

run() {  # run NAME overrides...
  local name=$1
  shift
  "$python" -m colorizer.bench video.frames=0 data_batches=0 "$@" "hydra.run.dir=$out/$name" \
    > "$out/$name.log" 2>&1
  echo "$name: $(grep -o '"run_efficiency": [0-9.]*' "$out/$name/bench.json")," \
    "$(grep -o '"end_to_end_images_per_s": [0-9.]*' "$out/$name/bench.json")"
}

# Step counts keep each model's run to a few minutes on 2 CPU cores; the GAN's 100 optimizer
# steps are 50 batches. Validation every 100 steps (the default), as a real run.
for data in embedded photos14; do
  extra=()
  [ "$data" = photos14 ] && extra=("data.root=$out/photos14")
  run "alpha_$data" model=alpha end_to_end.steps=300 "${extra[@]}" "$@"
  run "beta_$data" model=beta end_to_end.steps=200 "${extra[@]}" "$@"
  run "fullcnn_$data" model=fullcnn steps=5 repeats=3 end_to_end.steps=60 "${extra[@]}" "$@"
  run "gan_$data" model=gan data.image_size=256 warmup=2 steps=4 repeats=3 \
    end_to_end.steps=60 "${extra[@]}" "$@"
done
