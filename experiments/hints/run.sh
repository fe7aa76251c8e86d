#!/usr/bin/env bash
# PSNR against the number of hint points for the four models, each at its small settings
# (its class's small_settings) trained briefly with model.hints=true on the CPU:
#   experiments/hints/run.sh photos OUT PHOTOS [MINUTES]  # a folder with train/ and val/,
#       128² crops for MINUTES (5) each, scored on the val/ photos
#   experiments/hints/run.sh synthetic OUT [BATCHES]      # 32² scenes of random colours,
#       BATCHES (1000) each, scored on 64 test scenes
set -euo pipefail
usage="usage: run.sh photos OUT PHOTOS [MINUTES] | run.sh synthetic OUT [BATCHES]"
mode=${1:?$usage}
out=${2:?$usage}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
declare -A small=(
  [alpha]="model.optimizer=adam"
  [beta]="model.optimizer=adam"
  [fullcnn]="model.backbone=test_resnet model.embedding_size=64"
  [gan]="model.depth=5 model.base_channels=16 model.disc_channels=16"
)
counts=hints=0,1,2,5,10,20,50,100
for model in alpha beta fullcnn gan; do
  if [ "$mode" = photos ]; then
    photos=${3:?$usage}
    train=("data.root=$photos" data.image_size=128 data.batch_size=8 logger=csv
           trainer.max_steps=100000 "+trainer.max_time=00:00:$(printf %02d "${4:-5}"):00"
           trainer.val_check_interval=200)
    score=("data.root=$photos/val" split=all)
  else
    batches=${3:-1000}
    steps=$batches
    [ "$model" = gan ] && steps=$((2 * batches))  # the GAN steps two optimizers a batch
    train=(data=synthetic data.colours=random data.image_size=32 logger=none
           "trainer.max_steps=$steps" trainer.val_check_interval=250)
    score=(data=synthetic data.colours=random data.num_test=64)
  fi
  # shellcheck disable=SC2086
  "$python" -m colorizer.run "model=$model" ${small[$model]} model.hints=true "${train[@]}" \
    "hydra.run.dir=$out/train_$model"
  "$python" -m colorizer.evaluate "ckpt_path=$out/train_$model/checkpoints/last.ckpt" \
    "${score[@]}" "$counts" device=cpu "hydra.run.dir=$out/eval_$model"
done
