from .evaluation_hook import SampleEvaluationHook
from .rng_state_hook import RNGStateHook, get_rng_states, set_rng_states

__all__ = ['RNGStateHook', 'get_rng_states', 'set_rng_states', 'SampleEvaluationHook']
