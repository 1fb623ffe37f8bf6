#!/usr/bin/env bash
# The GPU figures of the closing notes: both benchmarks on one CUDA device, in one go.
# Needs the suite's dependencies importable (PYTHONPATH=. from the repository root).
set -u
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
echo "== ModTr vs full fine-tuning, FLIR-sized batch (8 x 512x640; the detector resizes to 800x1000)"
python3 benchmarks/modtr.py --detector fcos --translator resnet34 --size 512 640 --batch 8 --rounds 5
python3 benchmarks/modtr.py --detector fasterrcnn --translator resnet34 --size 512 640 --batch 8 --rounds 5
python3 benchmarks/modtr.py --detector fcos --translator mobilenet_v3_small --size 512 640 --batch 8 --rounds 5
echo "== adapters"
python3 benchmarks/adapters.py --size 64 --rounds 20
python3 benchmarks/adapters.py --size 96 --rounds 20
