from .evaluation_hook import SampleEvaluationHook
from .grad_clip_hook import GradClipFromHook
from .loss_guard_hook import LossGuardHook, NonFiniteLossError
from .resume_check_hook import ResumeCheckHook
from .rng_state_hook import RNGStateHook, get_rng_states, set_rng_states
from .sample_visualization_hook import SampleVisualizationHook, filmstrip

__all__ = ['RNGStateHook', 'get_rng_states', 'set_rng_states', 'LossGuardHook',
           'NonFiniteLossError', 'ResumeCheckHook', 'SampleEvaluationHook',
           'SampleVisualizationHook', 'filmstrip', 'GradClipFromHook']
