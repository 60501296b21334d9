# DeepSpeed ZeRO-1: optimizer states sharded across GPUs (xtuner's deepspeed_zero1).
# `tools/train.py CONFIG --deepspeed deepspeed_zero1`; "auto" values come from the
# training config (batch size, accumulation, clip_grad) and --amp (bf16/fp16).
strategy = dict(
    type='DeepSpeedStrategy',
    config=dict(
        gradient_accumulation_steps='auto',
        train_micro_batch_size_per_gpu='auto',
        gradient_clipping='auto',
        zero_allow_untested_optimizer=True,  # torch's AdamW from the config
        zero_force_ds_cpu_optimizer=False,
        zero_optimization=dict(stage=1, overlap_comm=True),
        fp16=dict(enabled='auto', initial_scale_power=16),
        bf16=dict(enabled='auto')))
