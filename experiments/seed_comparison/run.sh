#!/usr/bin/env bash
# The seed report's comparison, done fairly: the four models on the same data, split, image
# size, batch and number of training batches, with the gray baseline on the same test images.
#   bash experiments/seed_comparison/run.sh OUT_DIR [extra Hydra overrides, e.g. data.root=DIR]
# Default data: the embedded photographs (curated, fixed split); on COCO, e.g.:
#   bash experiments/seed_comparison/run.sh out data=coco data.root=~/data/coco data.subset=10000 \
#        trainer=gpu BATCHES=5000
set -euo pipefail
out=${1:?usage: run.sh OUT_DIR [overrides]}
shift
batches=${BATCHES:-120}
python=${PYTHON:-.venv/bin/python}
common=(data.image_size=256 logger=none "trainer.val_check_interval=$((batches / 3))" "$@")
for model in alpha beta fullcnn gan; do
  steps=$batches
  [ "$model" = gan ] && steps=$((2 * batches))  # two optimizer steps per batch
  "$python" -m colorizer.run "model=$model" "trainer.max_steps=$steps" "${common[@]}" \
    "hydra.run.dir=$out/$model" > "$out.$model.log" 2>&1
  echo "$model: done"
done
