"""Shared test set-up.

Tests use one torch thread: their tensors are tiny, and on small CI machines
(2 cores) torch's intra-op threads cost far more than they save on such sizes.
"""
import os.path as osp

import pytest
import torch

torch.set_num_threads(1)

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture
def repo_root():
    return REPO_ROOT
