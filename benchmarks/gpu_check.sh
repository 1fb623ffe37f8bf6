#!/usr/bin/env bash
# The GPU figures of the closing notes, in one go on one CUDA device.
# Needs the suite's dependencies importable (PYTHONPATH=. from the repository root).
set -u
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
echo "== ModTr (activation checkpointing none / detector / both) vs full fine-tuning, FLIR-sized batch (8 x 512x640)"
python3 benchmarks/modtr.py --detector fcos --translator resnet34 --size 512 640 --batch 8 --rounds 5
python3 benchmarks/modtr.py --detector fcos --translator resnet34 --size 512 640 --batch 8 --rounds 5 --bf16 \
    --variants modtr:none modtr:detector modtr:both
python3 benchmarks/modtr.py --detector fcos --translator mobilenet_v3_small --size 512 640 --batch 8 --rounds 5
[ "${FULL:-0}" = 1 ] && python3 benchmarks/modtr.py --detector fasterrcnn --translator resnet34 --size 512 640 --batch 8
echo "== serving: one detector + N translators vs N fine-tuned detectors"
python3 benchmarks/modtr_serving.py --detector fcos --translator mobilenet_v3_small --size 512 640 --batch 8 --n 1 4
[ "${FULL:-0}" = 1 ] && { python3 benchmarks/adapters.py --size 64 --rounds 20; python3 benchmarks/adapters.py --size 96 --rounds 20; }
exit 0
