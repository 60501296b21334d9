"""The composer's memory does not grow with the number of shots: a shot's prepared
picture is made when the timeline first needs it and dropped once the timeline has
passed it, a subtitle band once its segment has ended, and the speech is resampled a
segment at a time. Also: NaN and inf settings are refused in one line."""
import weakref

import av
import numpy as np
import pytest

from mmsora.apis.text2video import Composer, Shot
from mmsora.apis.text2video import compose as compose_module
from mmsora.apis.text2video.pipeline import check_options
from mmsora.apis.text2video.segmentation import Segment
from mmsora.utils.cli import UserError

SIZE, FPS = (64, 36), 8


def spoken_shots(seconds):
    """One shot of two segments (halves of ``seconds[i]``) per entry; a ramp as speech."""
    shots = []
    for index, length in enumerate(seconds):
        segments = []
        for half in range(2):
            segment = Segment(f'Shot {index}, part {half}.')
            n = int(length / 2 * 16000)
            segment.audio = np.linspace(-0.5, 0.5, n, dtype=np.float32) * (index + 1) / 8
            segment.sample_rate = 16000
            segments.append(segment)
        shots.append(Shot(segments, prompt=segments[0].text, index=index))
    return shots


class CountingComposer(Composer):
    """Records, at every frame, how many prepared pictures and subtitle bands are still
    alive, and how many segments' speech has been resampled."""

    def __init__(self, **kwargs):
        super().__init__(SIZE, fps=FPS, fade=0.5, **kwargs)
        self.pictures, self.bands = [], []
        self.pieces = []  # the length of each segment's speech, once resampled
        self.alive = []  # (prepared pictures, bands, segments resampled) at each frame

    def _prepare(self, picture):
        images = super()._prepare(picture)
        self.pictures.append(weakref.ref(images[0]))
        return images

    def subtitle_overlay(self, text):
        band, top = super().subtitle_overlay(text)
        self.bands.append(weakref.ref(band))
        return band, top

    def _overlay(self, frame, band, top):
        count = lambda refs: sum(ref() is not None for ref in refs)  # noqa: E731
        self.alive.append((count(self.pictures), count(self.bands), len(self.pieces)))
        return super()._overlay(frame, band, top)


def test_the_composer_frees_the_shots_the_timeline_has_passed(tmp_path, monkeypatch):
    """Every picture was prepared (and every subtitle band drawn) up front and kept to
    the end, and all the speech resampled at once: 1485 MB peak for 2000 words."""
    shots = spoken_shots([1.5, 1.0, 2.0, 1.5, 1.0, 1.5, 2.0, 1.0])
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (40, 72, 3), np.uint8) for _ in shots]
    composer, real_resample = CountingComposer(), compose_module.resample_audio

    def resample_audio(audio, rate, target):
        composer.pieces.append(len(audio))
        return real_resample(audio, rate, target)

    monkeypatch.setattr(compose_module, 'resample_audio', resample_audio)
    out = str(tmp_path / 'story.mp4')
    timeline = composer.compose(shots, pictures, out, progress=False)
    assert len(composer.alive) == timeline['num_frames'] == 92
    # each picture prepared once (none again after being dropped), each band drawn once
    assert len(composer.pictures) == len(shots)
    assert len(composer.bands) == len(timeline['segments']) == 16
    assert len(composer.pieces) == 16
    prepared, bands, resampled = np.array(composer.alive).T
    assert prepared.max() == 2 and prepared.min() == 1  # a cross-fade's two, else one
    assert bands.max() == 1   # the current segment's
    # the speech is resampled as the frames reach it: when frame n is drawn, the audio
    # is encoded up to n / FPS, so the segments begun by then (one more where a segment
    # begins there: its predecessor, resampled, can be some samples short)
    begun = [sum(start < n / FPS for start, _ in timeline['segments'])
             for n in range(len(resampled))]
    assert resampled[0] == 0 and (resampled <= np.array(begun) + 1).all()
    # the track holds each segment's speech in its place: a ramp from -a to a, a = 0.5 *
    # (index + 1) / 8 for its shot; inside the window (0.1 s off each end, for the
    # encoder's delay) its mean magnitude is a * (L - 0.2) / 2L (AAC is lossy: within 2%)
    with av.open(out) as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([f.to_ndarray().reshape(-1)
                                  for f in container.decode(stream)])
    assert stream.codec_context.sample_rate == 44100
    assert len(samples) >= sum(s.duration for s in shots) * 44100
    peaks = [0.5 * (index + 1) / 8 for index in range(len(shots)) for _ in range(2)]
    for (start, end), a in zip(timeline['segments'], peaks):
        window = samples[int((start + 0.1) * 44100):int((end - 0.1) * 44100)]
        level = a * (end - start - 0.2) / (2 * (end - start))
        assert abs(np.abs(window).mean() - level) < 0.02 * level, (start, level)


def test_pictures_are_all_checked_before_the_video_is_written(tmp_path):
    """Prepared as the video reaches them, a bad last picture would fail mid-write."""
    shots = spoken_shots([1.0, 1.0])
    pictures = [np.zeros((36, 64, 3), np.uint8), np.zeros((36, 64, 3), np.float32)]
    composer = CountingComposer()
    with pytest.raises(ValueError, match='pictures must be uint8'):
        composer.compose(shots, pictures, str(tmp_path / 'story.mp4'), progress=False)
    assert composer.pictures == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('setting', ['fps', 'fade', 'zoom'])
@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_composer_refuses_non_finite_settings(setting, value):
    """NaN compared false and passed ('cannot convert float NaN to integer' later), inf
    gave an OverflowError traceback."""
    with pytest.raises(UserError) as refused:
        Composer(SIZE, **{setting: value})
    message = str(refused.value)
    assert message.startswith(f'{setting} must be a finite number') and '\n' not in message
    assert message.endswith(f'got {value}')


@pytest.mark.parametrize('option', ['shot_seconds', 'pause'])
@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_check_options_refuses_non_finite_seconds(option, value):
    with pytest.raises(UserError) as refused:
        check_options(**{option: value})
    flag = '--' + option.replace('_', '-')
    assert str(refused.value) == f'{flag} must be a finite number of seconds >= 0, got {value}'
