"""Training objectives and samplers: DiT's Gaussian diffusion, SiT's interpolant
transport (flow matching), diffusers' schedulers."""
from .gaussian import (GaussianDiffusion, discretized_gaussian_log_likelihood,
                       get_named_beta_schedule, mean_flat, normal_kl, space_timesteps)
from .schedulers import (build_noise_scheduler, ddpm_variance_type, dit_scheduler_config,
                         scheduler_settings)
from .transport import PATHS, GVPPath, LinearPath, Transport, VPPath, open_sora_time_shift

__all__ = [
    'GaussianDiffusion', 'space_timesteps', 'get_named_beta_schedule', 'mean_flat',
    'normal_kl', 'discretized_gaussian_log_likelihood', 'dit_scheduler_config',
    'build_noise_scheduler', 'scheduler_settings', 'ddpm_variance_type', 'Transport',
    'LinearPath', 'GVPPath', 'VPPath', 'PATHS', 'open_sora_time_shift'
]
from .wuerstchen import WuerstchenDiffusion  # noqa: E402
__all__ += ['WuerstchenDiffusion']
