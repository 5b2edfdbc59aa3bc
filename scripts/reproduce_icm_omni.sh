#!/usr/bin/env bash
# Reproduce the shipped icm-omni, icm-omni-mse and icm-omni-aux weights (configs/codecs/) on the CPU.
# The recipe is a chain of runs of scripts/train_omni_codec.py, each starting from the last; their
# arguments and loss curves are in configs/codecs/icm-omni/train_log.json ("runs").
# Measured on the 2-core machine at one torch thread per run: 10 + 12 + 23 + 30 + 15 min, aux 1 min.
# Floating-point summation order differs across machines and thread counts, so the weights will not
# be bit-identical; the BD-rates should land within a few points (README, "Results").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
WORK=${ICM_WORK:-build/omni}
mkdir -p "$WORK"

# 1. stage A (rate + MSE at every rate, 64 px crops) then 800 steps of multi-task distillation
$PY scripts/train_omni_codec.py --stage-a-steps 6000 --stage-b-steps 0 --out configs/codecs/icm-omni-mse
$PY scripts/train_omni_codec.py --init configs/codecs/icm-omni-mse/model.pth --stage-a-steps 0 \
    --stage-b-steps 800 --out "$WORK/run1"
# 2. + the task models' own losses, low rates sampled more (rate = u^2), less MSE; stopped at 750 of
#    a 1800-step cosine schedule
$PY scripts/train_omni_codec.py --init "$WORK/run1/model.pth" --stage-a-steps 0 --stage-b-steps 1800 \
    --stop-after 750 --task-loss-weight 1 --mse-weight-b 0.1 --rate-power 2 --out "$WORK/run2"
# 3. 1000 more steps, segmentation weighted x2 (it was the task furthest from its target)
$PY scripts/train_omni_codec.py --init "$WORK/run2/model.pth" --stage-a-steps 0 --stage-b-steps 1000 \
    --task-loss-weight 1 --mse-weight-b 0.1 --rate-power 2 --task-scale seg=2 --out "$WORK/run3"
# 4. 500 steps with the rate term weighted 6**(1 - alpha): widens the rate range downwards
$PY scripts/train_omni_codec.py --init "$WORK/run3/model.pth" --stage-a-steps 0 --stage-b-steps 500 \
    --task-loss-weight 1 --mse-weight-b 0.1 --rate-power 2 --task-scale seg=2 --low-rate-weight 6 \
    --out configs/codecs/icm-omni
# 5. RDC stage II: the auxiliary scalable stream on top of the frozen icm-omni
$PY scripts/train_omni_aux.py --steps 1500
