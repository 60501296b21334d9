"""Tiny model configs shared by the tests."""

# A tiny random SD-style VAE: 2 blocks -> spatial factor 2, 4 latent channels.
TINY_VAE = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                norm_num_groups=8, down_block_types=('DownEncoderBlock2D',) * 2,
                up_block_types=('UpDecoderBlock2D',) * 2, sample_size=16)

# --cfg-options that shrink the main demo (configs/dit/dit_tiny2_1xb32_1500_shapes16.py)
# to 8x8 pictures, a 2-block DiT of width 32 and 3 logged steps with a global batch of
# 8 (for the multi-process training tests).
TINY_DEMO_OPTIONS = [
    'model.denoiser.hidden_size=32', 'model.denoiser.depth=2', 'model.denoiser.num_heads=2',
    'model.denoiser.input_size=8', 'model.latent_shape=[3,8,8]',
    'model.denoiser.class_dropout_prob=0.5',
    'train_dataloader.dataset.size=8', 'train_dataloader.dataset.num_samples=32',
    'param_scheduler=[]', 'train_cfg.max_iters=3', 'default_hooks.logger.interval=1',
    'global_batch_size=8',
]

# Words known to the tiny tokenizer of make_tiny_text_encoder (others map to <unk>).
TINY_WORDS = ('a red disk green square blue ring yellow cross bike rides on the road '
              'cat dog runs jumps in snow').split()


def make_tiny_text_encoder(path, kind='t5', width=32):
    """Save a tiny random T5 / CLIP text encoder and a word-level tokenizer to ``path``.

    The folder has the layout of a real download (config.json, weights, tokenizer
    files), so tests go through the real loading code of HFTextEncoder.
    """
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    specials = ['<pad>', '<unk>', '</s>']
    vocab = {w: i for i, w in enumerate(specials + list(TINY_WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single='$A </s>', special_tokens=[('</s>', vocab['</s>'])])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token='<pad>', unk_token='<unk>', eos_token='</s>')
    if kind == 't5':
        config = transformers.T5Config(
            vocab_size=len(vocab), d_model=width, d_kv=8, d_ff=2 * width, num_layers=2,
            num_heads=4, pad_token_id=0, eos_token_id=2)
        model = transformers.T5EncoderModel(config)
    else:
        config = transformers.CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
            projection_dim=16, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        cls = (transformers.CLIPTextModelWithProjection if kind == 'clip_with_projection'
               else transformers.CLIPTextModel)
        model = cls(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

# A tiny random Wan video VAE: spatial factor 4, temporal factor 2 (causal: T frames ->
# (T - 1) // 2 + 1 latent frames), 4 latent channels, with per-channel latent statistics.
TINY_WAN_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
                    temperal_downsample=[False, True], attn_scales=[],
                    latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 1.5, 1.0, 0.5])
