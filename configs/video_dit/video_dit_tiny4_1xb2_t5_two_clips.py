# CPU-sized text-to-video check on real footage: a tiny text-conditioned VideoDiT
# (STDiT blocks, cross-attention to T5 tokens, learned null caption) learns two clips,
# each under its own caption, in pixel space; tools/infer.py then samples each one back
# from its prompt. It checks that captions reach the model and steer it, end to end
# (manifest captions -> T5 -> cross-attention -> guidance -> mp4): not a generator of
# new videos. tests/test_tools/test_text_to_video_overfit.py runs it.
# The data: two clips and a caption for each (the test's), as a manifest beside them;
# the text encoder is read from a local folder (nothing is downloaded):
#   echo '{"bikes.mp4": "a bike rides on the road",
#          "bigbuckbunny.mp4": "a cat runs in the snow"}' > data/videos/captions.json
#   python tools/make_manifest.py data/videos --out data/videos/captions.csv \
#       --captions data/videos/captions.json
#   python tools/train.py configs/video_dit/video_dit_tiny4_1xb2_t5_two_clips.py \
#       --cfg-options model.text_encoder.pretrained_path=checkpoints/t5-small
#   python tools/infer.py work_dirs/video_dit_tiny4_1xb2_t5_two_clips \
#       --prompt "a bike rides on the road" "a cat runs in the snow" --out clips/ \
#       --cfg-scale 2 --cfg-options model.text_encoder.pretrained_path=checkpoints/t5-small
# Captions are encoded at every step here (two clips, a tiny encoder); for real data
# store T5 embeddings once with tools/extract_features.py --text-encoder and train
# from the packed store (configs/video_dit/video_dit_xl2_8xb5_1m_t5_clips256.py).
_base_ = ['../_base_/default_runtime.py']

num_frames, size = 4, 32
model = dict(
    type='LatentDiffusion',
    denoiser=dict(
        type='VideoDiT', input_size=size, patch_size=4, in_channels=3, hidden_size=64,
        depth=4, num_heads=4, mlp_ratio=4.0, learn_sigma=False, num_frames=num_frames,
        block_type='stdit', condition='text', text_dim=512, max_text_len=8,  # t5-small: 512
        # Drop 10% of captions to the null caption so that guidance has an
        # unconditional model to push against.
        class_dropout_prob=0.1),
    # x0 prediction and a cosine schedule, as in the one-clip overfit demo.
    diffusion=dict(type='GaussianDiffusion', num_timesteps=1000,
                   beta_schedule='squaredcos_cap_v2', learn_sigma=False,
                   predict_xstart=True),
    vae=None,
    text_encoder=dict(type='HFTextEncoder', pretrained_path='checkpoints/t5-small',
                      kind='t5', max_length=16),
    latent_shape=(3, num_frames, size, size),
    num_classes=1,
)
sample_cfg = dict(sampler='ddim', num_steps=25, cfg_scale=1.0, fps=3.125)

# A manifest with a caption per video (tools/make_manifest.py --captions, above).
data_root = 'data/videos'
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='VideoDataset', data_root=data_root, manifest='captions.csv', seed=0,
        require_caption=True,
        pipeline=[
            dict(type='SampleClipIndices', num_frames=num_frames, frame_stride=8,
                 mode='center'),
            dict(type='DecodeFrames'),
            dict(type='ResizeCropVideo', size=size, crop='center'),
            dict(type='PackVideoInputs'),
        ]),
)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.0),
    clip_grad=dict(max_norm=1.0),
)
max_iters = 400
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0, end=40),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=40, end=max_iters, eta_min=1e-5),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=1),
)
custom_hooks = [
    dict(type='EMAHook', momentum=0.05, update_buffers=True, priority='ABOVE_NORMAL'),
    dict(type='RNGStateHook'),
]
