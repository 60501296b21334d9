"""Pictures flow shot by shot from the backend to the composer: each is made when the
video reaches its shot (an mmsora model's a batch of shots at a time) and dropped once
the video has passed it. Before, every shot's picture was made before the first frame
and held to the last (1.5 MiB a shot at 480p; docs/text2video.md, Measured). The frames
and audio handed to the encoder are those of before, bit for bit, and an error or
Ctrl-C while a picture is made leaves no part file."""
import hashlib
import weakref

import numpy as np
import pytest

from mmsora.apis import inference
from mmsora.apis.text2video import (Composer, PictureBackend, Shot, SpeechBackend,
                                    build_pictures, text_to_video)
from mmsora.utils.cli import Interrupted, UserError
from tests.tiny_models import tiny_shapes_dit_run

# One shot a sentence (shot_seconds=0) of 1-3 words: 0.25-0.55 s with ToneSpeech.
TEXT = 'One. Two three. Four. Five six seven. Eight. Nine ten.'


class ToneSpeech(SpeechBackend):
    """A tone of 0.15 s a word, its pitch from the text: short shots, a track to hash."""

    def synthesize(self, text, language):
        n = int(0.15 * 16000 * len(text.split()))
        pitch = 0.02 * (len(text) % 7 + 1)
        return (0.3 * np.sin(pitch * np.arange(n))).astype(np.float32), 16000


class SeededPictures(PictureBackend):
    """Noise seeded by the shot's index: a small picture (enlarged), a clip, a large
    picture, in turn; each one made is recorded (weakly); shot ``fail_at`` raises."""

    def __init__(self, fail_at=None, error=None):
        self.made, self.fail_at, self.error = [], fail_at, error

    def render(self, shot, size):
        if shot.index == self.fail_at:
            raise self.error
        shape = [(20, 36, 3), (3, 40, 72, 3), (60, 90, 3)][shot.index % 3]
        picture = np.random.default_rng(shot.index).integers(0, 256, shape, np.uint8)
        self.made.append(weakref.ref(picture))
        return picture


class HashingComposer(Composer):
    """Hashes each frame and the audio samples handed to the encoder, and records at
    each frame (its time) how many pictures were made and how many are still held."""

    def __init__(self, pictures=None, **kwargs):
        super().__init__((64, 36), **kwargs)
        self.pictures, self.frames, self.audio, self.seen = pictures, [], hashlib.sha256(), []

    def _write(self, container, frame_at, num_frames, audio, progress):
        def hashed(t):
            image = frame_at(t)
            self.frames.append(hashlib.sha256(image.tobytes()).hexdigest())
            if self.pictures is not None:
                made = self.pictures.made
                self.seen.append((t, len(made), sum(ref() is not None for ref in made)))
            return image

        def pieces():
            for piece in audio:
                self.audio.update(np.ascontiguousarray(piece, np.float32).tobytes())
                yield piece
        super()._write(container, hashed, num_frames, pieces(), progress)

    def digest(self):
        """The first 16 hex digits of the SHA-256 of the frames' and of the audio."""
        frames = hashlib.sha256(''.join(self.frames).encode()).hexdigest()
        return frames[:16], self.audio.hexdigest()[:16]


def video(out, composer, pictures, progress=False):
    return text_to_video(TEXT, out, speech=ToneSpeech(), pictures=pictures,
                         composer=composer, shot_seconds=0, pause=0.1, progress=progress)


def test_each_picture_is_made_when_the_video_reaches_its_shot(tmp_path):
    """All were made before the first frame and held to the last (and after it, by
    the result's shots)."""
    pictures = SeededPictures()
    composer = HashingComposer(pictures, fps=8)
    result = video(tmp_path / 'story.mp4', composer, pictures)
    shots = result.timeline['shots']
    assert len(shots) == len(pictures.made) == 6
    assert len(composer.seen) == result.timeline['num_frames'] == 17
    for t, made, held in composer.seen:
        # the shots begun by t, and the next where its cross-fade (<= 0.5 s) has begun
        begun = sum(start <= t + 0.25 for start, _ in shots)
        assert made <= begun and held <= 2, (t, made, held, begun)
    assert composer.seen[0][1] == 1
    assert all(ref() is None for ref in pictures.made)  # none kept


# The first 16 hex digits of the SHA-256 of the frames and of the audio samples handed to
# the encoder by the code before pictures were streamed (commit 4a8eca7: all made first,
# composed from a list). No subtitles (they depend on the fonts installed); the frames
# depend on Pillow's resampling (Pillow 13.0 when computed). At 2 fps without fades the
# third shot (0.65-0.90 s) is shown in no frame: its picture is made and dropped.
@pytest.mark.parametrize('fps, fade, expected', [
    (8, 0.5, ('f61a34f8a5b356b5', 'b71385de9a5cdd91')),
    (2, 0.0, ('62e4df63b27bf87a', 'b71385de9a5cdd91'))])
def test_the_frames_and_audio_are_those_of_before(tmp_path, fps, fade, expected):
    pictures = SeededPictures()
    composer = HashingComposer(fps=fps, fade=fade, subtitles=False)
    result = video(tmp_path / 'story.mp4', composer, pictures)
    assert len(pictures.made) == 6
    shown = {sum(start <= n / fps for start, _ in result.timeline['shots']) - 1
             for n in range(result.timeline['num_frames'])}
    assert shown == (set(range(6)) if fps == 8 else {0, 1, 3, 4, 5})
    assert composer.digest() == expected


def test_subtitled_frames_are_those_of_the_pictures_made_all_at_once(tmp_path):
    streamed = HashingComposer(fps=8)
    result = video(tmp_path / 'streamed.mp4', streamed, SeededPictures())
    listed = HashingComposer(fps=8)
    pictures = SeededPictures().render_all(result.shots, listed.picture_size,
                                           progress=False)
    listed.compose(result.shots, pictures, str(tmp_path / 'listed.mp4'), progress=False)
    assert len(streamed.frames) == 17 and streamed.frames == listed.frames
    assert streamed.digest() == listed.digest()


@pytest.fixture(scope='module')
def tiny_dit(tmp_path_factory):
    return tiny_shapes_dit_run(tmp_path_factory.mktemp('dit'))


def test_a_model_samples_a_batch_of_shots_when_the_video_reaches_it(tiny_dit, monkeypatch):
    _, checkpoint, _ = tiny_dit
    calls, real = [], inference.sample_images

    def sample_images(model, labels, seeds, **kwargs):
        calls.append(list(seeds))
        return real(model, labels, seeds, **kwargs)

    monkeypatch.setattr(inference, 'sample_images', sample_images)
    shots = [Shot([], prompt=f'prompt {i}', index=i) for i in range(5)]
    backend = build_pictures(f'mmsora:{checkpoint}', seed=5, device='cpu', batch_size=2)
    stream = backend.iter_pictures(shots, (64, 36), progress=False)
    taken = [next(stream)]
    assert calls == [[5, 6]]
    taken += [next(stream), next(stream)]
    assert calls == [[5, 6], [7, 8]]
    taken += list(stream)
    assert calls == [[5, 6], [7, 8], [9]] and len(taken) == 5
    # shot k's picture whatever the batching: seed 5 + k
    whole = build_pictures(f'mmsora:{checkpoint}', seed=5, device='cpu')
    np.testing.assert_array_equal(
        np.stack(taken), np.stack(whole.render_all(shots, (64, 36), progress=False)))


@pytest.mark.parametrize('error', [UserError('no picture'), KeyboardInterrupt()])
def test_a_picture_failing_mid_video_leaves_no_part_file(tmp_path, error):
    out = tmp_path / 'new' / 'story.mp4'
    composer = HashingComposer(fps=8)
    with pytest.raises(type(error)) as failed:
        video(out, composer, SeededPictures(fail_at=3, error=error))
    assert composer.frames  # (it failed while the frames were written)
    assert list(tmp_path.iterdir()) == []  # no part file, and no folder made for it
    if isinstance(error, KeyboardInterrupt):
        assert isinstance(failed.value, Interrupted)
        assert str(failed.value) == f'(nothing written to {out})'
    out.parent.mkdir()
    out.write_bytes(b'the video before')
    with pytest.raises(type(error)):
        video(out, HashingComposer(fps=8), SeededPictures(fail_at=3, error=error))
    assert [p.name for p in out.parent.iterdir()] == ['story.mp4']
    assert out.read_bytes() == b'the video before'


def test_the_pictures_bar_counts_the_shots_as_they_are_made(tmp_path, capsys):
    video(tmp_path / 'story.mp4', Composer((64, 36), fps=8), SeededPictures(),
          progress=True)
    err = capsys.readouterr().err
    lines = err.replace('\r', '\n').splitlines()
    assert any(line.startswith('pictures: 100%') and '6/6' in line for line in lines)
    assert any(line.startswith('video frames: 100%') and '17/17' in line for line in lines)
    assert err.endswith('\n'), repr(err)
