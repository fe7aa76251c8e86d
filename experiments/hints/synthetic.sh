#!/usr/bin/env bash
# PSNR against the number of hint points for the four models (their small settings), each
# trained STEPS batches with model.hints=true on 32² synthetic scenes whose colours are drawn
# at random (data.colours=random: only hints can tell them), evaluated on 64 test scenes.
#   experiments/hints/synthetic.sh OUT [STEPS]
set -euo pipefail
out=${1:?usage: synthetic.sh OUT [STEPS]}
steps=${2:-1000}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
declare -A small=(
  [alpha]="model.optimizer=adam"
  [beta]="model.optimizer=adam"
  [fullcnn]="model.backbone=test_resnet model.embedding_size=64"
  [gan]="model.depth=5 model.base_channels=16 model.disc_channels=16"
)
for model in alpha beta fullcnn gan; do
  optimizer_steps=$steps
  [ "$model" = gan ] && optimizer_steps=$((2 * steps))  # the GAN steps two optimizers a batch
  # shellcheck disable=SC2086
  "$python" -m colorizer.run "model=$model" ${small[$model]} model.hints=true data=synthetic \
    data.colours=random data.image_size=32 logger=none "trainer.max_steps=$optimizer_steps" \
    trainer.val_check_interval=250 "hydra.run.dir=$out/train_$model"
  "$python" -m colorizer.evaluate "ckpt_path=$out/train_$model/checkpoints/last.ckpt" \
    data=synthetic data.colours=random data.num_test=64 hints=0,1,2,5,10,20,50,100 device=cpu \
    "hydra.run.dir=$out/eval_$model"
done
