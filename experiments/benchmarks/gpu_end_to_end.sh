#!/usr/bin/env bash
# Whole runs on a GPU: colorizer.bench's end-to-end row (a real colorizer.run training on the
# photos: the data source reading the files, every callback, checkpoints, the CSV logger) next to
# the step alone, for the four models at 256², batch 16 and 64, trainer=gpu; then the GAN with
# its last.ckpt switched off and with compile=true channels_last=true, to see what each costs.
#   bash experiments/benchmarks/gpu_end_to_end.sh OUT_DIR PHOTOS_DIR [extra overrides]
# PHOTOS_DIR: the 24 shared photographs (train/ and val/ subfolders). Each run is capped at
# BENCH_TIMEOUT seconds (default 240); a capped run leaves its log and no bench.json.
# Targets (issue 23): end to end >= 0.9 x the step alone for every model; gan >= 1,500 images/s
# at batch 16 and >= 2,500 at batch 64.
set -uo pipefail
out=${1:?usage: gpu_end_to_end.sh OUT_DIR PHOTOS_DIR [overrides]}
photos=${2:?usage: gpu_end_to_end.sh OUT_DIR PHOTOS_DIR [overrides]}
shift 2
python=${PYTHON:-python3}
limit=${BENCH_TIMEOUT:-240}
trainer=${TRAINER:-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

run() {  # run NAME overrides...
  local name=$1 start
  shift
  start=$(date +%s)
  timeout "$limit" "$python" -m colorizer.bench "trainer=$trainer" video.frames=0 data_batches=0 \
    warmup=3 steps=20 repeats=3 "data.root=$photos" data.image_size=256 data.num_workers=8 \
    "$@" "hydra.run.dir=$out/$name" > "$out/$name.log" 2>&1
  echo "$name: exit $? after $(( $(date +%s) - start )) s:" \
    "$(grep -ho '"run_efficiency": [0-9.]*\|"end_to_end_images_per_s": [0-9.]*' \
      "$out/$name/bench.json" 2>/dev/null | tr '\n' ' ')"
}

for batch in 16 64; do
  for model in alpha beta fullcnn gan; do
    run "${model}_b$batch" "model=$model" "data.batch_size=$batch" end_to_end.steps=2000 "$@"
  done
done
run gan_b16_no_last model=gan data.batch_size=16 end_to_end.steps=2000 callbacks.last=null "$@"
run gan_b16_compiled model=gan data.batch_size=16 end_to_end.steps=2000 compile=true \
  channels_last=true "$@"
