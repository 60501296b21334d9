"""Tiny random model folders for CPU checks: text encoders and Stable Cascade Stage B + A.

Each folder has the layout of the real download (config.json, weights, tokenizer
files, the pipeline's subfolders), so what reads it is the code that reads released
weights. The weights are random: these folders exercise a path end to end, they do not
generate anything meaningful. ``tools/make_tiny_stable_cascade.py`` writes the ones the
tiny Stable Cascade config names; the tests build theirs with the same functions.
"""
import os.path as osp

import torch

__all__ = ['TINY_WORDS', 'TINY_STAGE_A', 'TINY_STAGE_B', 'make_tiny_text_encoder',
           'make_tiny_stable_cascade_decoder']

# Words known to the tiny tokenizer of make_tiny_text_encoder (others map to <unk>).
TINY_WORDS = ('a red disk green square blue ring yellow cross bike rides on the road '
              'cat dog runs jumps in snow').split()

_B = (('SDCascadeResBlock', 'SDCascadeTimestepBlock'),
      ('SDCascadeResBlock', 'SDCascadeTimestepBlock', 'SDCascadeAttnBlock'))
# Tiny Stage B with the released layout (patch 2, effnet + pixel mappers, repeat
# mappers, 'sca' conditioning) for 4-channel Stage C latents, and a tiny Stage A.
TINY_STAGE_B = dict(
    in_channels=4, out_channels=4, timestep_ratio_embedding_dim=16, patch_size=2,
    conditioning_dim=16, block_out_channels=(8, 16), num_attention_heads=(0, 2),
    down_num_layers_per_block=(1, 1), up_num_layers_per_block=(1, 1),
    down_blocks_repeat_mappers=(1, 1), up_blocks_repeat_mappers=(2, 1),
    block_types_per_layer=_B, clip_text_pooled_in_channels=20, clip_seq=2,
    effnet_in_channels=4, pixel_mapper_in_channels=3, kernel_size=3, dropout=(0.0, 0.0),
    self_attn=True, timestep_conditioning_type=('sca',), switch_level=None)
TINY_STAGE_A = dict(levels=2, bottleneck_blocks=1, embed_dim=16, latent_channels=4,
                    num_vq_embeddings=16)


def make_tiny_text_encoder(path, kind='t5', width=32):
    """Save a tiny random T5 / CLIP text encoder and a word-level tokenizer to ``path``.

    Args:
        path (str): Folder to write (config.json, weights, tokenizer files).
        kind (str): ``'t5'``, ``'clip'`` or ``'clip_with_projection'`` (projection 16).
        width (int): Hidden size. Defaults to 32.

    Returns:
        str: ``path``.
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


def make_tiny_stable_cascade_decoder(path, stage_c_channels=16, pooled_dim=16,
                                     subfolder='decoder_lite', seed=0):
    """Save a tiny random Stage B (in ``subfolder``), Stage A (``vqgan``) and the
    scheduler in the layout of the ``stabilityai/stable-cascade`` folder.

    Args:
        path (str): Folder to write.
        stage_c_channels (int): Channels of the Stage C latents Stage B reads.
        pooled_dim (int): Width of the pooled text embedding Stage B is given.
        subfolder (str): Stage B's folder, ``'decoder_lite'`` or ``'decoder'``.
        seed (int): Seed of the random weights.

    Returns:
        str: ``path``.
    """
    from diffusers import DDPMWuerstchenScheduler
    from diffusers.models.unets.unet_stable_cascade import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import \
        PaellaVQModel
    torch.manual_seed(seed)
    StableCascadeUNet(**dict(TINY_STAGE_B, effnet_in_channels=stage_c_channels,
                             clip_text_pooled_in_channels=pooled_dim)).save_pretrained(
        osp.join(path, subfolder))
    PaellaVQModel(**TINY_STAGE_A).save_pretrained(osp.join(path, 'vqgan'))
    DDPMWuerstchenScheduler().save_pretrained(osp.join(path, 'scheduler'))
    return path
