#!/usr/bin/env bash
# The GPU figures of the closing notes, in one go on one CUDA device.
# Needs the suite's dependencies importable (PYTHONPATH=. from the repository root). Pass the step names to run a
# part (predict serving modtr); all three by default, the GPU-only checks of transfer.predict first.
# A machine whose Python lacks some of them (an image with only PyTorch, Lightning and timm) can put pure-Python
# copies of MONAI, Hydra/OmegaConf, nibabel, pydicom and soundfile, and wheels of cffi and faster-coco-eval built
# for its Python, on PYTHONPATH; that is how the figures in the changelog's notes were made on an H200.
set -u
steps=${*:-predict serving modtr}
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
if [[ " $steps " == *" predict "* ]]; then
echo "== transfer.predict --device cuda: the GPU's masks agree with the CPU's; audio and image runs predict on the GPU"
python3 -m pytest -o addopts="" -p no:cacheprovider -q tests/test_predict.py -k "device or audio or images"
echo "== case inference on the GPU: 512x512x32 head CT, 1 vs 5 folds, TTA, vs MONAI's plain sliding window"
python3 benchmarks/predict.py --device cuda --shape 512 512 32 --folds 5 --tta --rounds 3 --threads 8
fi
if [[ " $steps " == *" modtr "* ]]; then
echo "== ModTr (activation checkpointing none / detector / both) vs full fine-tuning, FLIR-sized batch (8 x 512x640)"
python3 benchmarks/modtr.py --detector fcos --translator resnet34 --size 512 640 --batch 8 --rounds 5
python3 benchmarks/modtr.py --detector fcos --translator resnet34 --size 512 640 --batch 8 --rounds 5 --bf16 \
    --variants modtr:none modtr:detector modtr:both
python3 benchmarks/modtr.py --detector fcos --translator mobilenet_v3_small --size 512 640 --batch 8 --rounds 5
[ "${FULL:-0}" = 1 ] && python3 benchmarks/modtr.py --detector fasterrcnn --translator resnet34 --size 512 640 --batch 8
fi
if [[ " $steps " == *" serving "* ]]; then
echo "== serving: one detector + N translators vs N fine-tuned detectors"
python3 benchmarks/modtr_serving.py --detector fcos --translator mobilenet_v3_small --size 512 640 --batch 8 --n 1 4
fi
[ "${FULL:-0}" = 1 ] && { python3 benchmarks/adapters.py --size 64 --rounds 20; python3 benchmarks/adapters.py --size 96 --rounds 20; }
exit 0
