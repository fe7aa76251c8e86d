#!/usr/bin/env bash
# What writing last.ckpt costs a whole run: the GAN (its last.ckpt is 686 MB: two networks and
# two Adam states) at 256², batch 8, 120 optimizer steps, with last.ckpt every 30 s written in
# the background (the default writer), the same written on the training thread (Lightning's
# TorchCheckpointIO), and no last.ckpt at all; alternated, twice each.
#   bash experiments/benchmarks/checkpoint_overhead.sh OUT_DIR FOLDER   # FOLDER: photos
# Prints each run's own train_images_per_s (metrics.json).
set -euo pipefail
out=${1:?usage: checkpoint_overhead.sh OUT_DIR FOLDER}
folder=${2:?usage: checkpoint_overhead.sh OUT_DIR FOLDER}
python=${PYTHON:-.venv/bin/python}
common=(model=gan "data.root=$folder" data.image_size=256 data.batch_size=8
        trainer.max_steps=120 logger=csv)
i=0
for mode in background none sync background none sync; do
  i=$((i + 1))
  case $mode in
    background) extra=(callbacks.last.every_n_minutes=0.5) ;;
    none) extra=(callbacks.last=null) ;;
    sync) extra=(callbacks.last.every_n_minutes=0.5
                 "+trainer.plugins=[{_target_:lightning.fabric.plugins.TorchCheckpointIO}]") ;;
  esac
  "$python" -m colorizer.run "${common[@]}" "${extra[@]}" "hydra.run.dir=$out/$i-$mode" \
    > "$out/$i-$mode.log" 2>&1
  echo "$i $mode $(grep -o '"train_images_per_s": [0-9.]*' "$out/$i-$mode/metrics.json")"
done
