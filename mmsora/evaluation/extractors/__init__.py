"""Feature extractors of the metrics; each reads its weights from a local file."""
from .clip import CLIPEmbedder
from .i3d import I3DTorchScript
from .inception import InceptionV3FID

__all__ = ['InceptionV3FID', 'I3DTorchScript', 'CLIPEmbedder']
