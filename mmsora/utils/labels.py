"""Class labels: the one rule for every place that takes them (tools/infer.py's and
text2video's ``--labels``, :func:`~mmsora.apis.inference.sample_images`, a training
batch and ``sample()``, a latent store and the writer of one)."""
from typing import Optional

import numpy as np
import torch

__all__ = ['check_label_range']


def check_label_range(labels, num_classes: Optional[int], where: str, *, null=(),
                      error=None, explain=None) -> None:
    """The rule for class labels: whole numbers in ``[0, num_classes)``.

    Refused labels are named in one line: ``{where} [5] out of range: the model has 3
    classes``, or ``{where} [1.5] are not class ids (whole numbers): ...`` (1.5 was
    read as class 1).

    Args:
        labels: The labels: a sequence, a numpy array or a tensor.
        num_classes: The model's classes; None (unknown): whole numbers of any value.
        where: What the message names them by: ``'--labels'``, ``"the batch's
            labels"``, ``"ROOT: the store's labels"``.
        null: Labels the place also takes: -1 ("no label") in a one-class model's
            batches and stores, which the model reads as class 0. ``--labels`` names
            classes to sample, and takes none (DiT's null label ``num_classes`` is the
            denoiser's own, for dropped labels and guidance: no place gives it).
        error: The exception raised; :class:`~mmsora.utils.cli.UserError` when None
            (the model and the store writer raise ValueError).
        explain: ``explain(sentence, bad)`` gives the message for labels out of range
            from the sentence above and the sorted labels at fault, where a place has
            a fix to add (the config change to make).
    """
    if error is None:
        from mmsora.utils.cli import UserError as error
    if torch.is_tensor(labels):
        labels = labels.detach().cpu().numpy()
    values = np.asarray(labels).reshape(-1)
    classes = ('' if num_classes is None else
               f'the model has {num_classes} class{"es" * (num_classes != 1)}')
    if values.dtype.kind == 'f':
        not_whole = values[~(np.isfinite(values) & (values == np.round(values)))]
    else:
        not_whole = values[:0] if values.dtype.kind in 'iu' else values
    if len(not_whole):
        raise error(f'{where} {_some(not_whole)} are not class ids (whole numbers)'
                    f'{": " + classes if classes else ""}')
    if num_classes is None:
        return
    bad = values[((values < 0) | (values >= num_classes)) & ~np.isin(values, list(null))]
    if len(bad):
        bad = sorted(int(y) for y in np.unique(bad))
        sentence = f'{where} {_some(bad)} out of range: {classes}'
        raise error(explain(sentence, bad) if explain is not None else sentence)


def _some(values, most=8) -> str:
    """The first ``most`` distinct values, as a list (a store holds millions)."""
    values = [v.item() if hasattr(v, 'item') else v for v in dict.fromkeys(values)]
    return str(values[:most])[:-1] + ', ...]' if len(values) > most else str(values)
