"""The checks tools/infer.py and tools/test.py make from a run's config alone, before
the weights load (minutes, and 5.7 GB for Stable Cascade lite): finding the run,
loading its config with the command line's options and the checkpoint's objective
against the config (the sampling settings against its objective:
``mmsora.utils.config_keys.check_sample_settings_of``). Each tool had its own copy of
these steps."""
from typing import Optional

__all__ = ['load_run_config', 'check_run_objective']


def load_run_config(run: str, cfg_options=(), schedule_note: bool = True):
    """``(cfg, saved)``: the config of ``run`` (a config file, or a work dir made by
    tools/train.py) with ``cfg_options`` applied, as ``init_model`` will load it, and
    the work dir's newest checkpoint (None for a config file); None where the run or
    its config does not load (``init_model`` says why)."""
    from mmsora.apis.inference import find_run
    from mmsora.utils.cfg_options import apply_cfg_options
    from mmsora.utils.config_loading import load_config
    try:
        config, saved = find_run(run)
        cfg = load_config(config)
        apply_cfg_options(cfg, cfg_options, schedule_note=schedule_note)
    except Exception:  # said where init_model meets it
        return None
    return cfg, saved


def check_run_objective(model, run: str, checkpoint: Optional[str] = None,
                        saved: Optional[str] = None, name: Optional[str] = None) -> None:
    """The checkpoint to load (``checkpoint``, else ``saved``, the newest of the work
    dir ``run``) against the ``model`` config's objective and denoiser
    (:func:`~mmsora.utils.trained_settings.check_trained_objective`); ``name``: the
    checkpoint as the messages name it (default ``--checkpoint CKPT``)."""
    from mmsora.utils.trained_settings import check_trained_objective
    if checkpoint:
        check_trained_objective(checkpoint, model, name)
    elif saved:
        check_trained_objective(saved, model, f'{run}: its checkpoint {saved}')
