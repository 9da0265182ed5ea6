"""The learning-rate schedule of the authors' CIFAR adversarial-training scripts, named once.

TRADES' ``train_trades_cifar10.py`` sets the lr at the start of each 1-based epoch e (its
``adjust_learning_rate``):

    lr = base · 0.1^[e ≥ 75] · 0.1^[e ≥ 90] · 0.1^[e ≥ 100]

and MART (``train_wideresnet.py``, ``train_resnet.py``), HE (``train_adv_cifar10.py``), ADT
(``adt_exp.py``) and AT-BSL (``train_at_bsl_cifar10.py``, ``_cifar100.py``, ``_tiny_imagenet.py``) carry
the same function. The training loop here steps a MultiStepLR after each 0-based epoch, so "from their
epoch e on" is the 0-based milestone e − 1: ``CIFAR_AT_MILESTONES`` = [74, 89, 99].

The common long-tail protocol (``benchmark.config``) is AT-BSL's 100 epochs of it: 0-based epochs 0–73
at lr 0.1, 74–88 at 0.01, 89–98 at 0.001 and the last one, 99 (their epoch 100, where e ≥ 100 holds), at
0.0001. The config writes it as shares of the budget, ``COMMON_MILESTONES``, so that it is exactly AT-BSL's
at 100 epochs and scales with any other budget (the authors' epochs are absolute: at 50 epochs their
code would never decay). AT-BSL's best-epoch rule scores the epochs with e ≥ 75, i.e. from 0-based 74:
``COMMON_SELECT_FROM``.

TAET's notebook uses another schedule, MultiStepLR([75, 90]) stepped after each 0-based epoch (lr 0.01
from 0-based epoch 75), which its ``authors`` preset spells out.
"""
from __future__ import annotations

# lr ×0.1 from the scripts' 1-based epochs 75, 90 and 100, as 0-based epochs (absolute, as in their code)
CIFAR_AT_MILESTONES = [74, 89, 99]
# the same at AT-BSL's 100 epochs, as shares of the budget ("74/100": after 74 of 100 epochs)
COMMON_MILESTONES = [f"{m}/100" for m in CIFAR_AT_MILESTONES]
# first 0-based epoch AT-BSL's best-epoch rule scores (its `if epoch >= 75`, 1-based), as a share of the budget
COMMON_SELECT_FROM = "74/100"
