"""One-command text-to-video: text -> segments -> speech -> pictures -> narrated mp4.

Offline by default (eSpeak NG voice, procedural title cards, PyAV); cloud speech
(Azure, Edge) and pictures (OpenAI) are options. See docs/text2video.md.
"""
from .compose import RESOLUTIONS, Composer, ken_burns_box, parse_resolution
from .pictures import (DiffusersPictures, MMSoraPictures, OpenAIPictures, PictureBackend,
                       TitleCardPictures, build_pictures)
from .pipeline import Text2VideoResult, plan_segments, speak, text_to_video
from .registry import PICTURE_BACKENDS, SPEECH_BACKENDS
from .segmentation import (Segment, Shot, build_prompt, detect_language, group_shots,
                           split_segments, split_sentences)
from .speech import (AzureSpeech, EdgeSpeech, EspeakSpeech, PiperSpeech, SilentSpeech,
                     SpeechBackend, build_speech)

__all__ = [
    'text_to_video', 'Text2VideoResult', 'plan_segments', 'speak', 'Composer',
    'RESOLUTIONS', 'parse_resolution', 'ken_burns_box', 'Segment', 'Shot',
    'split_sentences', 'split_segments', 'group_shots', 'build_prompt', 'detect_language',
    'SPEECH_BACKENDS', 'PICTURE_BACKENDS', 'SpeechBackend', 'EspeakSpeech', 'PiperSpeech',
    'EdgeSpeech', 'AzureSpeech', 'SilentSpeech', 'build_speech', 'PictureBackend',
    'TitleCardPictures', 'MMSoraPictures', 'DiffusersPictures', 'OpenAIPictures',
    'build_pictures'
]
