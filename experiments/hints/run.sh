#!/usr/bin/env bash
# PSNR against the number of hint points for the four models, each trained briefly with
# model.hints=true on a folder of photos (train/ and val/ subfolders) on the CPU, then
# evaluated on its val/ photos with 0..100 points revealed from the truth.
#   experiments/hints/run.sh OUT PHOTOS [MINUTES]
set -euo pipefail
out=${1:?usage: run.sh OUT PHOTOS [MINUTES]}
photos=${2:?usage: run.sh OUT PHOTOS [MINUTES]}
minutes=${3:-3}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
# Each model's small settings (its class's small_settings), so all four train on two cores.
declare -A small=(
  [alpha]="model.optimizer=adam"
  [beta]="model.optimizer=adam"
  [fullcnn]="model.backbone=test_resnet model.embedding_size=64"
  [gan]="model.depth=5 model.base_channels=16 model.disc_channels=16"
)
for model in alpha beta fullcnn gan; do
  # shellcheck disable=SC2086
  "$python" -m colorizer.run "model=$model" ${small[$model]} model.hints=true \
    "data.root=$photos" data.image_size=128 data.batch_size=8 logger=csv \
    trainer.max_steps=100000 "+trainer.max_time=00:00:$(printf %02d "$minutes"):00" \
    trainer.val_check_interval=200 "hydra.run.dir=$out/train_$model"
  "$python" -m colorizer.evaluate "ckpt_path=$out/train_$model/checkpoints/last.ckpt" \
    "data.root=$photos/val" split=all hints=0,1,2,5,10,20,50,100 device=cpu \
    "hydra.run.dir=$out/eval_$model"
done
