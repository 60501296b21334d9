"""mmsora: train and sample Sora-style video diffusion transformers on modest GPUs."""
import os as _os

__version__ = '0.1.0'


def _quiet_deepspeed_on_cpu():
    """DeepSpeed, which mmengine imports whenever it is installed, warns "Setting
    accelerator to CPU ..." at every start on a machine without CUDA; it takes the CPU
    there anyway (the same test as its own): naming it keeps the logs to what matters."""
    if 'DS_ACCELERATOR' in _os.environ:
        return
    from importlib.util import find_spec
    if find_spec('deepspeed') is None:  # nothing to quiet: no CUDA query at import
        return
    import torch
    if not (torch.cuda.device_count() > 0 and torch.cuda.is_available()):
        _os.environ['DS_ACCELERATOR'] = 'cpu'


_quiet_deepspeed_on_cpu()
