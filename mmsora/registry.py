"""Every registry of mmsora, in one place.

Each mmengine root registry that the Runner touches gets a child here with scope
``'mmsora'`` and ``locations`` naming the package that fills it, so that building from
a config with ``default_scope='mmsora'`` finds our modules first and mmengine's (or
mmcv's) through the parent, without scope-fallback warnings. ``DIFFUSION`` and
``NOISE_SCHEDULERS`` are roots of our own: mmengine has no notion of them.
"""
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import INFERENCERS as MMENGINE_INFERENCERS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import \
    RUNNER_CONSTRUCTORS as MMENGINE_RUNNER_CONSTRUCTORS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import STRATEGIES as MMENGINE_STRATEGIES
from mmengine.registry import TASK_UTILS as MMENGINE_TASK_UTILS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import \
    WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS
from mmengine.registry import Registry

__all__ = [
    'RUNNERS', 'RUNNER_CONSTRUCTORS', 'LOOPS', 'HOOKS', 'STRATEGIES', 'DATASETS',
    'DATA_SAMPLERS', 'TRANSFORMS', 'MODELS', 'MODEL_WRAPPERS',
    'WEIGHT_INITIALIZERS', 'OPTIMIZERS', 'OPTIM_WRAPPERS',
    'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS', 'METRICS', 'EVALUATOR',
    'TASK_UTILS', 'VISUALIZERS', 'VISBACKENDS', 'LOG_PROCESSORS', 'INFERENCERS',
    'FUNCTIONS', 'DIFFUSION', 'NOISE_SCHEDULERS', 'SPEECH_BACKENDS', 'PICTURE_BACKENDS'
]

# --------------------------------------------------------------------------- #
#                      Children of mmengine's root registries                  #
# --------------------------------------------------------------------------- #
RUNNERS = Registry('runner', parent=MMENGINE_RUNNERS, locations=['mmsora.engine'])
RUNNER_CONSTRUCTORS = Registry(
    'runner constructor', parent=MMENGINE_RUNNER_CONSTRUCTORS, locations=['mmsora.engine'])
LOOPS = Registry('loop', parent=MMENGINE_LOOPS, locations=['mmsora.engine'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, locations=['mmsora.engine'])
STRATEGIES = Registry('strategy', parent=MMENGINE_STRATEGIES, locations=['mmsora.engine'])

DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, locations=['mmsora.datasets'])
DATA_SAMPLERS = Registry(
    'data sampler', parent=MMENGINE_DATA_SAMPLERS, locations=['mmsora.datasets'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, locations=['mmsora.datasets'])

MODELS = Registry('model', parent=MMENGINE_MODELS, locations=['mmsora.models'])
MODEL_WRAPPERS = Registry(
    'model_wrapper', parent=MMENGINE_MODEL_WRAPPERS, locations=['mmsora.models'])
WEIGHT_INITIALIZERS = Registry(
    'weight initializer', parent=MMENGINE_WEIGHT_INITIALIZERS, locations=['mmsora.models'])

OPTIMIZERS = Registry('optimizer', parent=MMENGINE_OPTIMIZERS, locations=['mmsora.engine'])
OPTIM_WRAPPERS = Registry(
    'optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS, locations=['mmsora.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor', parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    locations=['mmsora.engine'])
PARAM_SCHEDULERS = Registry(
    'parameter scheduler', parent=MMENGINE_PARAM_SCHEDULERS, locations=['mmsora.engine'])

METRICS = Registry('metric', parent=MMENGINE_METRICS, locations=['mmsora.evaluation'])
EVALUATOR = Registry('evaluator', parent=MMENGINE_EVALUATOR, locations=['mmsora.evaluation'])
TASK_UTILS = Registry('task util', parent=MMENGINE_TASK_UTILS, locations=['mmsora.models'])

VISUALIZERS = Registry('visualizer', parent=MMENGINE_VISUALIZERS, locations=['mmsora.engine'])
VISBACKENDS = Registry('vis_backend', parent=MMENGINE_VISBACKENDS, locations=['mmsora.engine'])
LOG_PROCESSORS = Registry(
    'log_processor', parent=MMENGINE_LOG_PROCESSORS, locations=['mmsora.engine'])
INFERENCERS = Registry('inferencer', parent=MMENGINE_INFERENCERS, locations=['mmsora.apis'])
FUNCTIONS = Registry('function', parent=MMENGINE_FUNCTIONS, locations=['mmsora.datasets'])

# --------------------------------------------------------------------------- #
#                          Roots of mmsora's own                               #
# --------------------------------------------------------------------------- #
# Training objectives (GaussianDiffusion, later Transport): noise, loss, sampling maths.
DIFFUSION = Registry('diffusion', scope='mmsora', locations=['mmsora.diffusion'])
# Inference-time samplers with diffusers' contract (set_timesteps / timesteps / step).
NOISE_SCHEDULERS = Registry(
    'noise scheduler', scope='mmsora', locations=['mmsora.diffusion'])
# The text-to-video pipeline's backends (mmsora.apis.text2video): text -> speech
# (offline espeak-ng, piper with a local voice; cloud Azure, Edge) and prompt -> picture
# (title cards, mmsora checkpoints, local diffusers pipelines, OpenAI).
SPEECH_BACKENDS = Registry('speech backend', scope='mmsora',
                           locations=['mmsora.apis.text2video.speech'])
PICTURE_BACKENDS = Registry('picture backend', scope='mmsora',
                            locations=['mmsora.apis.text2video.pictures'])
