#!/usr/bin/env bash
# The flicker study: clips over held-out photographs, each model per frame, with
# temporal=flow and the gray baseline; then the speed of colorize on a film per model.
#   bash experiments/video_flicker/run.sh PHOTOS_DIR OUT_DIR CKPT_ALPHA CKPT_BETA CKPT_FULLCNN CKPT_GAN
set -euo pipefail
photos=${1:?usage: run.sh PHOTOS_DIR OUT_DIR CKPT_ALPHA CKPT_BETA CKPT_FULLCNN CKPT_GAN}
out=${2:?}
shift 2
python=${PYTHON:-.venv/bin/python}
"$python" experiments/video_flicker/make_clips.py "$photos" "$out/clips"
for name in alpha beta fullcnn gan; do
  ckpt=$1
  shift
  "$python" -m colorizer.evaluate "ckpt_path=$ckpt" "videos=$out/clips" size=256 \
    batch_size=8 device=cpu "hydra.run.dir=$out/flicker_$name" > "$out/flicker_$name.log" 2>&1
  grep -o '"video/[a-z_]*": [0-9.e-]*' "$out/flicker_$name/metrics.json" | tr '\n' ' '
  echo "<- $name"
done
# The metric's floor: steady colours written as colorize writes films.
"$python" experiments/video_flicker/floor.py "$out/clips" | tee "$out/floor.txt"
# Speed: decode + colorize + encode of a 640x360 film (24 frames), untrained weights (speed
# does not depend on them); the other bench measures are cut short and not reported.
brief=(warmup=1 steps=1 repeats=1 data_batches=1 trainer.accelerator=cpu video.repeats=3)
for name in alpha beta fullcnn gan; do
  extra=()
  [ "$name" = gan ] && extra=(data.image_size=256)
  "$python" -m colorizer.bench "model=$name" "${brief[@]}" "${extra[@]}" \
    "hydra.run.dir=$out/bench_$name" > "$out/bench_$name.log" 2>&1
  grep -o '"video_[a-z_]*": [0-9.]*' "$out/bench_$name/bench.json" | tr '\n' ' '
  echo "<- $name"
done
