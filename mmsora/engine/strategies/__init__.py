"""Distributed strategies (DeepSpeed ZeRO, FSDP) and speed switches for training."""
from .deepspeed import (DEEPSPEED_PRESETS, ResumeHooksHook, fill_auto, is_zero_checkpoint,
                        load_strategy, mend_mmengine_deepspeed,
                        to_flexible_runner_config, zero_model_states)
from .fsdp import FSDPGradClipHook, mend_mmengine_fsdp, transformer_block_wrap_policy
from .speed import (CompileDenoiserHook, keep_freed_cpu_memory, prefer_fused_optimizer,
                    set_tf32, tf32_supported)
from .train_options import (accumulation_of, amp_dtype_of, apply_amp, apply_global_batch,
                            apply_speed_options, apply_strategy, check_accumulation,
                            chosen_strategy, drop_disabled_hooks, fit_loader_workers,
                            drop_amp, launcher_world_size, prepare_deepspeed,
                            seed_model_at_run_time, single_process_env, fsdp_on_cpu)

__all__ = ['DEEPSPEED_PRESETS', 'ResumeHooksHook', 'fill_auto', 'is_zero_checkpoint',
           'load_strategy', 'mend_mmengine_deepspeed',
           'to_flexible_runner_config',
           'zero_model_states',
           'transformer_block_wrap_policy', 'FSDPGradClipHook', 'fsdp_on_cpu',
           'mend_mmengine_fsdp', 'CompileDenoiserHook', 'prefer_fused_optimizer',
           'set_tf32', 'tf32_supported', 'keep_freed_cpu_memory', 'amp_dtype_of',
           'apply_amp', 'drop_amp',
           'apply_speed_options', 'chosen_strategy', 'apply_strategy',
           'prepare_deepspeed', 'single_process_env', 'apply_global_batch',
           'launcher_world_size', 'accumulation_of', 'check_accumulation',
           'drop_disabled_hooks',
           'fit_loader_workers',
           'seed_model_at_run_time']
