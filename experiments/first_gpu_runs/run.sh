#!/usr/bin/env bash
# The four models, a few hundred steps each on real photographs at 256², bf16-mixed, one GPU.
# Writes OUT/runs.tgz (per model: .hydra/, csv/metrics.csv, metrics.json, samples/; no
# checkpoints) and OUT/log.txt. Run from the repository root:
#   bash experiments/first_gpu_runs/run.sh PHOTOS_DIR OUT_DIR
set -uo pipefail
photos=${1:?usage: run.sh PHOTOS_DIR OUT_DIR}
out=${2:?usage: run.sh PHOTOS_DIR OUT_DIR}
runs="$out/runs"
mkdir -p "$runs"
export PYTHONUNBUFFERED=1

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, lightning, timm; print('torch', torch.__version__, 'lightning', lightning.__version__, 'timm', timm.__version__)"
  nproc
} > "$runs/machine.txt" 2>&1

python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_color.py > "$runs/pytest_gpu.txt" 2>&1

common=(trainer=gpu "data.root=$photos" data.image_size=256 data.batch_size=10
        data.num_workers=6 trainer.val_check_interval=100 logger=csv)
for spec in "alpha:model=alpha trainer.max_steps=300" \
            "beta:model=beta trainer.max_steps=300" \
            "fullcnn:model=fullcnn trainer.max_steps=300" \
            "gan:model=gan trainer.max_steps=600"; do
  name=${spec%%:*}
  read -r -a args <<< "${spec#*:}"
  start=$(date +%s)
  timeout 80 python3 -m colorizer.run "${common[@]}" "${args[@]}" "hydra.run.dir=$runs/$name" \
    > "$runs/$name.log" 2>&1
  echo "$name: exit $? after $(( $(date +%s) - start )) s"
  rm -rf "$runs/$name/checkpoints"
  # keep the test grid and the last validation grid (what comes back is size-capped)
  find "$runs/$name/samples" -name 'step_*.png' | sort | head -n -1 | xargs -r rm -f
done

tar czf "$out/runs.tgz" -C "$out" runs && rm -rf "$runs"
