# CLIP score of a text-to-video model: the mean over clips of the per-frame
# 100 * max(cos(CLIP image, CLIP text), 0) (Hessel et al.'s CLIPScore, per pair), with
# openai/clip-vit-large-patch14 from a local folder. Give the prompts to score,
# cycled over the samples: tools/test.py --prompt-file prompts.txt (one a line, as
# tools/infer.py reads it), prompts=[...] here, or
# --cfg-options "evaluation.prompts=['a cat runs', ...]".
evaluation = dict(
    num_samples=1024,
    batch_size=8,
    seed=0,
    prompts=None,
    metrics=[
        dict(type='CLIPScore',
             extractor=dict(type='CLIPEmbedder',
                            pretrained_path='checkpoints/clip-vit-large-patch14')),
    ],
)
