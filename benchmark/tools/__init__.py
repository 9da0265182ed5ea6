"""Tools around the harness, never imported by the pipeline (data → train → evaluate → record → report).

``python -m benchmark.tools.perf``       training speed: a naive PGD-10 AT loop vs our fast path (``make perf``)
``python -m benchmark.tools.gpu_check``  the check on a CUDA machine (``make gpu-check``)
``python -m benchmark.tools.cards``      regenerates the method cards in ``docs/methods/`` (``make docs``)
``benchmark.tools.synthetic``            CIFAR-shaped synthetic data in the torchvision layout (for the GPU check)
"""
