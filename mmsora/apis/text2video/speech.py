"""Speech backends: text -> mono float32 samples.

The offline default is eSpeak NG. It is found, in this order, as the library and voice
data that the ``espeakng-loader`` wheel ships (``pip install espeakng-loader``, in
mmsora's ``[tests]`` and ``[optional]`` extras), as the system library
``libespeak-ng`` (``apt-get install espeak-ng``), or as the ``espeak-ng`` program.
Piper speaks with a local voice model; Azure and Edge are cloud voices, used only when
their package (and for Azure its key) is present.

Without a voice named, a segment in a script that names its language (Cyrillic, kana,
Hangul, Devanagari, Arabic, Greek, ...: ``segmentation.SCRIPTS``) is read by that
language's voice, not by the English or Mandarin one.
"""
import ctypes
import ctypes.util
import difflib
import io
import itertools
import os
import os.path as osp
import shutil
import subprocess
import sys
import threading
import wave
from typing import Optional, Tuple

import numpy as np

from mmsora.utils.cli import UserError
from .registry import SPEECH_BACKENDS
from .segmentation import SCRIPTS, check_unicode, script_language

__all__ = ['SpeechBackend', 'EspeakSpeech', 'PiperSpeech', 'EdgeSpeech', 'AzureSpeech',
           'SilentSpeech', 'decode_audio', 'resample_audio', 'build_speech',
           'SPEECH_SHORT_NAMES']

OFFLINE_HINT = ('for offline speech use --speech espeak (pip install espeakng-loader, or '
                'apt-get install espeak-ng), or --speech none for silent subtitles')


class SpeechBackend:
    """Base class: ``synthesize(text, language)`` -> ``(samples, sample_rate)``."""

    def synthesize(self, text: str, language: str) -> Tuple[np.ndarray, int]:
        """Speak ``text``.

        Args:
            text: One segment.
            language: ``'en'``, ``'zh'`` or another language code (picks the default
                voice; a segment in a script that names another language, Cyrillic,
                kana, ..., is read in that one).

        Returns:
            Mono float32 samples in [-1, 1] and their sample rate.
        """
        raise NotImplementedError


def _say(line: str) -> None:
    """Print a note on a line of its own, between progress bars."""
    from tqdm import tqdm
    tqdm.write(line, file=sys.stderr)


# --------------------------------------------------------------------------- #
#                               Audio helpers                                 #
# --------------------------------------------------------------------------- #
def decode_audio(data: bytes) -> Tuple[np.ndarray, int]:
    """Decode an encoded clip (wav, mp3, ...) with PyAV into mono float32 samples."""
    import av
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.audio:
            raise ValueError('the speech service returned no audio stream')
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format='flt', layout='mono', rate=rate)
        chunks = [f.to_ndarray().reshape(-1) for frame in container.decode(stream)
                  for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return audio.astype(np.float32), int(rate)


def resample_audio(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Resample mono float32 samples with FFmpeg's resampler (through PyAV)."""
    import av
    if rate == target or len(audio) == 0:
        return audio.astype(np.float32)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio, np.float32)[None],
                                       format='flt', layout='mono')
    frame.sample_rate = rate
    resampler = av.AudioResampler(format='flt', layout='mono', rate=target)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float32)


def _read_wav(data: bytes) -> Tuple[np.ndarray, int]:
    """16-bit PCM wav bytes -> mono float32 samples."""
    with wave.open(io.BytesIO(data)) as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f'expected 16-bit PCM speech, got {8 * wav.getsampwidth()}-bit')
        samples = np.frombuffer(wav.readframes(wav.getnframes()), '<i2')
        samples = samples.reshape(-1, wav.getnchannels()).mean(axis=1)
        return (samples / 32768.0).astype(np.float32), wav.getframerate()


# --------------------------------------------------------------------------- #
#                                  eSpeak NG                                  #
# --------------------------------------------------------------------------- #
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short),
                                   ctypes.c_int, ctypes.c_void_p)


class _EspeakVoice(ctypes.Structure):
    """``espeak_VOICE`` of speak_lib.h. ``languages`` is a pointer, not a string: it
    holds several ``<priority byte><language>\\0`` entries, ended by a 0 byte."""
    _fields_ = [('name', ctypes.c_char_p), ('languages', ctypes.c_void_p),
                ('identifier', ctypes.c_char_p), ('gender', ctypes.c_ubyte),
                ('age', ctypes.c_ubyte), ('variant', ctypes.c_ubyte),
                ('xx1', ctypes.c_ubyte), ('score', ctypes.c_int),
                ('spare', ctypes.c_void_p)]


def _voice_languages(address: int):
    """``[(priority, language), ...]`` of an ``espeak_VOICE.languages`` list."""
    found = []
    while address and ctypes.string_at(address, 1) != b'\0':
        priority = ctypes.string_at(address, 1)[0]
        language = ctypes.string_at(address + 1)  # up to its 0 byte
        found.append((priority, language.decode('utf-8', 'replace')))
        address += 2 + len(language)
    return found


class _EspeakLibrary:
    """libespeak-ng through ctypes. The library keeps one global state, so one
    instance per process serves every EspeakSpeech, behind a lock."""

    _instance = None
    _lock = threading.Lock()

    def __init__(self, library_path: str, data_path: Optional[str]):
        lib = ctypes.CDLL(library_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                          ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                     ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                     ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                     data_path.encode() if data_path else None,
                                     _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise UserError(f'eSpeak NG ({library_path}) could not load its voice data '
                            f'({data_path or "default location"}); {OFFLINE_HINT}')
        self.lib, self.sample_rate, self.chunks = lib, rate, []
        self._voices, self._resolved = None, {}
        # Keep the callback object alive: the library holds only its address.
        self._callback = _SYNTH_CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples, events):
        if num_samples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0  # 0: go on synthesizing

    @classmethod
    def get(cls, library_path, data_path):
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls(library_path, data_path)
            return cls._instance

    def voices(self):
        """The installed voices: ``[(name, identifier, [(priority, language), ...])]``
        from ``espeak_ListVoices``."""
        if self._voices is None:
            listed, self._voices = self.lib.espeak_ListVoices(None), []
            for i in itertools.count():
                if not listed[i]:
                    break
                voice = listed[i].contents
                self._voices.append((voice.name.decode('utf-8', 'replace'),
                                     voice.identifier.decode('utf-8', 'replace'),
                                     _voice_languages(voice.languages)))
        return self._voices

    def _voice_file(self, voice: str) -> Optional[str]:
        """The voice file (identifier, with any ``+variant``) that ``voice`` names: a
        language code (``en-gb``, ``en-GB``; its preferred voice, as ``espeak-ng -v``
        picks) or a voice name as ``espeak-ng --voices`` shows it
        (``English_(Great_Britain)``); None if none does."""
        base, plus, variant = voice.partition('+')
        wanted = base.strip().lower()
        by_language = [(priority, identifier) for _, identifier, languages in self.voices()
                       for priority, language in languages if language.lower() == wanted]
        by_name = [identifier for name, identifier, _ in self.voices()
                   if name.lower() in (wanted, wanted.replace('_', ' '))]
        found = min(by_language)[1] if by_language else (by_name or [None])[0]
        return found + plus + variant if found else None

    def select_voice(self, voice: str) -> None:
        """Make ``voice`` the current voice.

        Before, only ``espeak_SetVoiceByName`` was tried, which knows voice file names
        (``en``, ``gmw/en``, ``de``) and full names but not most language codes: ``en-gb``
        was refused, with a message that suggested ``en-gb``. Like the ``espeak-ng -v``
        command, a name that is no voice file is now looked up among the languages (and
        names) of ``espeak_ListVoices``.

        Raises:
            UserError: no such voice, naming close matches and a few that exist.
        """
        if voice not in self._resolved:
            found = voice if self.lib.espeak_SetVoiceByName(voice.encode()) == 0 \
                else self._voice_file(voice)
            if found is None:
                raise UserError(self._unknown_voice_message(voice))
            self._resolved[voice] = found
        if self.lib.espeak_SetVoiceByName(self._resolved[voice].encode()) != 0:
            raise UserError(self._unknown_voice_message(voice))

    def _unknown_voice_message(self, voice: str) -> str:
        """One line: the voice refused, close matches, a few voices that exist."""
        codes = list(dict.fromkeys(language for _, _, languages in self.voices()
                                   for _, language in languages))
        close = difflib.get_close_matches(voice.lower(), codes, n=3, cutoff=0.6)
        examples = [c for c in ('en-us', 'en-gb', 'de', 'fr', 'es', 'cmn') if c in codes]
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        return (f'eSpeak NG has no voice {voice!r}{hint} ({len(codes)} languages, e.g. '
                f'{", ".join(examples or codes[:6])}); choose one with --speech espeak:VOICE')

    def check_voice(self, voice: str) -> None:
        """:meth:`select_voice` for a caller outside the lock (a backend checking its
        voice before any work starts)."""
        with self._lock:
            self.select_voice(voice)

    def has_voice(self, language: str) -> bool:
        """Whether a voice speaks ``language`` (a language code)."""
        with self._lock:
            return self._voice_file(language) is not None

    def synthesize(self, text: str, voice: str, words_per_minute: int) -> np.ndarray:
        check_unicode(text)  # not an encode error from the line below
        with self._lock:
            self.select_voice(voice)
            self.lib.espeak_SetParameter(_PARAM_RATE, int(words_per_minute), 0)
            self.chunks = []
            data = text.encode('utf-8') + b'\0'
            status = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0,
                                           _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            if status != 0:
                raise RuntimeError(f'eSpeak NG failed (status {status}) on {text!r}')
            chunks, self.chunks = self.chunks, []
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return (audio / 32768.0).astype(np.float32)


def find_espeak() -> Tuple[str, str, Optional[str]]:
    """Locate eSpeak NG: ``('library', lib_path, data_path)`` or ``('program', path,
    None)``.

    Raises:
        UserError: no eSpeak NG anywhere, naming how to get it and the alternatives.
    """
    try:
        import espeakng_loader
        return 'library', espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except ImportError:
        pass
    library = ctypes.util.find_library('espeak-ng')
    if library:
        return 'library', library, None
    program = shutil.which('espeak-ng')
    if program:
        return 'program', program, None
    raise UserError('no offline speech engine: --speech espeak needs eSpeak NG '
                    '(pip install espeakng-loader, or apt-get install espeak-ng); '
                    'or use --speech none (silent, subtitles only), --speech piper:VOICE.onnx '
                    'with a local voice, --speech edge or --speech azure')


@SPEECH_BACKENDS.register_module()
class EspeakSpeech(SpeechBackend):
    """eSpeak NG, offline: the library through ctypes, else its program.

    Args:
        voice: eSpeak voice (``en-us``, ``en-gb``, ``cmn`` for Mandarin, ...); default
            by language.
        words_per_minute: Speaking rate. Defaults to 160.
        engine: ``'auto'`` (library, else program), ``'library'`` or ``'program'``.
    """

    VOICES = {'en': 'en-us', 'zh': 'cmn'}

    def __init__(self, voice: Optional[str] = None, words_per_minute: int = 160,
                 engine: str = 'auto'):
        # script language -> whether a voice speaks it (each said once)
        self._script_voices = {}
        if engine not in ('auto', 'library', 'program'):
            raise ValueError(f"engine must be 'auto', 'library' or 'program', got {engine!r}")
        if not 80 <= words_per_minute <= 450:
            raise UserError(f'speaking rate must be 80..450 words per minute, got '
                            f'{words_per_minute}')
        self.voice, self.words_per_minute, self.engine = voice, words_per_minute, engine
        # fail now, before any stage starts, if there is no engine or no such voice
        kind, path, data = self._locate()
        if voice and kind == 'library':
            _EspeakLibrary.get(path, data).check_voice(voice)

    def _locate(self):
        kind, path, data = find_espeak()
        if self.engine == 'program' and kind != 'program':
            path = shutil.which('espeak-ng')
            if path is None:
                raise UserError('the espeak-ng program is not on PATH (apt-get install '
                                'espeak-ng); ' + OFFLINE_HINT)
            kind = 'program'
        elif self.engine == 'library' and kind != 'library':
            raise UserError('no eSpeak NG library: pip install espeakng-loader, or '
                            'apt-get install espeak-ng')
        return kind, path, data

    def _default_voice(self, text: str, language: str) -> str:
        """The voice of ``language``, or of the language the segment's script names
        (Cyrillic: ``ru``, kana: ``ja``, Devanagari: ``hi``, ...), said once per script.

        Before, language detection knew English and Chinese only: Russian was read by
        the en-us voice (letter by letter, 16.9 s for two short sentences) and Japanese
        by the Mandarin one, without a word.
        """
        voice = self.VOICES.get(language, language)
        scripted = script_language(text)
        if scripted is None or scripted == language:
            return voice
        if scripted not in self._script_voices:
            found = self._has_voice(scripted)
            self._script_voices[scripted] = found
            script = SCRIPTS[scripted][0]
            _say(f"note: {script} text is read with eSpeak's {scripted!r} voice; "
                 '--speech espeak:VOICE names another' if found else
                 f'warning: eSpeak NG has no {scripted!r} voice for {script} text: it is '
                 f'read with {voice!r}; name a voice with --speech espeak:VOICE')
        return scripted if self._script_voices[scripted] else voice

    def _has_voice(self, language: str) -> bool:
        kind, path, data = self._locate()
        if kind == 'library':
            return _EspeakLibrary.get(path, data).has_voice(language)
        # the program lists a language's voices under a header line
        listed = subprocess.run([path, f'--voices={language}'], capture_output=True,
                                text=True, errors='replace', timeout=60).stdout
        return len(listed.strip().splitlines()) > 1

    def synthesize(self, text, language):
        check_unicode(text)
        voice = self.voice or self._default_voice(text, language)
        kind, path, data = self._locate()
        if kind == 'library':
            engine = _EspeakLibrary.get(path, data)
            return engine.synthesize(text, voice, self.words_per_minute), engine.sample_rate
        result = subprocess.run(
            [path, '-v', voice, '-s', str(self.words_per_minute), '-b', '1', '--stdout',
             '--stdin'], input=text.encode('utf-8'), capture_output=True, timeout=300)
        if result.returncode != 0 or not result.stdout:
            raise UserError(f'espeak-ng failed for voice {voice!r}: '
                            f'{result.stderr.decode(errors="replace").strip()}')
        return _read_wav(result.stdout)


# --------------------------------------------------------------------------- #
#                              Other voices                                   #
# --------------------------------------------------------------------------- #
@SPEECH_BACKENDS.register_module()
class SilentSpeech(SpeechBackend):
    """No voice: silence as long as reading the text takes (subtitles only).

    Args:
        words_per_minute: English reading speed; Chinese reads at 2.5 characters per
            English word. Defaults to 160.
        sample_rate: Rate of the silent track. Defaults to 16000.
    """

    def __init__(self, words_per_minute: int = 160, sample_rate: int = 16000):
        self.words_per_minute, self.sample_rate = words_per_minute, sample_rate

    def synthesize(self, text, language):
        from .segmentation import CJK
        cjk = len(CJK.findall(text))
        words = len(CJK.sub(' ', text).split()) + cjk / 2.5
        seconds = max(1.0, 60.0 * words / self.words_per_minute)
        return np.zeros(int(round(seconds * self.sample_rate)), np.float32), self.sample_rate


@SPEECH_BACKENDS.register_module()
class PiperSpeech(SpeechBackend):
    """Piper neural TTS with a local voice model (``VOICE.onnx`` + ``VOICE.onnx.json``).

    Nothing is downloaded: voices are files you keep (``pip install piper-tts``).

    Args:
        model: Path of the voice's ``.onnx`` file.
    """

    def __init__(self, model: str):
        if not osp.isfile(model):
            raise UserError(f'piper voice model not found: {model!r} (piper needs a local '
                            f'VOICE.onnx with its VOICE.onnx.json); {OFFLINE_HINT}')
        try:
            from piper import PiperVoice
        except ImportError:
            raise UserError('--speech piper needs the piper-tts package '
                            f'(pip install piper-tts); {OFFLINE_HINT}') from None
        self.voice = PiperVoice.load(model)

    def synthesize(self, text, language):
        buffer = io.BytesIO()
        with wave.open(buffer, 'wb') as wav:
            # piper-tts >= 1.3 names it synthesize_wav; older releases synthesize.
            speak = getattr(self.voice, 'synthesize_wav', None) or self.voice.synthesize
            speak(text, wav)
        return _read_wav(buffer.getvalue())


def _cloud_voice(voices: dict, text: str, language: str, name: str) -> str:
    """The default voice of a cloud backend for a segment: its script's language if it
    names one (Cyrillic: ru, ...), else ``language``.

    Raises:
        UserError: no default voice for that language, naming the option.
    """
    language = script_language(text) or language
    if language not in voices:
        raise UserError(f'--speech {name} has no default voice for {language!r} text; '
                        f'name one with --speech {name}:VOICE')
    return voices[language]


@SPEECH_BACKENDS.register_module()
class EdgeSpeech(SpeechBackend):
    """Microsoft Edge's online voices through the ``edge-tts`` package (needs network).

    Args:
        voice: Edge voice name; default by language.
    """

    VOICES = {'en': 'en-US-AriaNeural', 'zh': 'zh-CN-XiaoxiaoNeural',
              'ja': 'ja-JP-NanamiNeural', 'ko': 'ko-KR-SunHiNeural',
              'ru': 'ru-RU-SvetlanaNeural', 'el': 'el-GR-AthinaNeural',
              'ar': 'ar-SA-ZariyahNeural', 'hi': 'hi-IN-SwaraNeural'}

    def __init__(self, voice: Optional[str] = None):
        try:
            import edge_tts  # noqa: F401
        except ImportError:
            raise UserError('--speech edge needs the edge-tts package (pip install '
                            f'edge-tts) and network access; {OFFLINE_HINT}') from None
        self.voice = voice

    def synthesize(self, text, language):
        import asyncio

        import edge_tts
        voice = self.voice or _cloud_voice(self.VOICES, text, language, 'edge')

        async def fetch():
            audio = bytearray()
            communicate = edge_tts.Communicate(text, voice)
            async for chunk in communicate.stream():
                if chunk['type'] == 'audio':
                    audio += chunk['data']
            return bytes(audio)

        return decode_audio(asyncio.run(fetch()))


@SPEECH_BACKENDS.register_module()
class AzureSpeech(SpeechBackend):
    """Azure AI Speech (``azure-cognitiveservices-speech``), with the key and region in
    ``AZURE_SPEECH_KEY`` / ``AZURE_SPEECH_REGION`` (or ``SPEECH_KEY`` / ``SPEECH_REGION``).

    Args:
        voice: Azure voice name; default by language.
    """

    VOICES = {'en': 'en-US-JennyNeural', 'zh': 'zh-CN-XiaoxiaoNeural',
              'ja': 'ja-JP-NanamiNeural', 'ko': 'ko-KR-SunHiNeural',
              'ru': 'ru-RU-SvetlanaNeural', 'el': 'el-GR-AthinaNeural',
              'ar': 'ar-SA-ZariyahNeural', 'hi': 'hi-IN-SwaraNeural'}

    def __init__(self, voice: Optional[str] = None):
        key = os.environ.get('AZURE_SPEECH_KEY') or os.environ.get('SPEECH_KEY')
        region = os.environ.get('AZURE_SPEECH_REGION') or os.environ.get('SPEECH_REGION')
        if not key or not region:
            raise UserError('--speech azure needs AZURE_SPEECH_KEY and AZURE_SPEECH_REGION '
                            f'in the environment; {OFFLINE_HINT}')
        try:
            import azure.cognitiveservices.speech as speechsdk
        except ImportError:
            raise UserError('--speech azure needs the azure-cognitiveservices-speech '
                            f'package; {OFFLINE_HINT}') from None
        self.sdk, self.voice = speechsdk, voice
        self.config = speechsdk.SpeechConfig(subscription=key, region=region)
        self.config.set_speech_synthesis_output_format(
            speechsdk.SpeechSynthesisOutputFormat.Riff24Khz16BitMonoPcm)

    def synthesize(self, text, language):
        self.config.speech_synthesis_voice_name = (
            self.voice or _cloud_voice(self.VOICES, text, language, 'azure'))
        synthesizer = self.sdk.SpeechSynthesizer(speech_config=self.config,
                                                 audio_config=None)
        result = synthesizer.speak_text_async(text).get()
        if result.reason != self.sdk.ResultReason.SynthesizingAudioCompleted:
            details = getattr(result, 'cancellation_details', None)
            reason = getattr(details, 'error_details', None) or result.reason
            raise UserError(f'Azure speech failed: {reason}')
        return _read_wav(result.audio_data)


# NAME -> (registered type, argument that ``NAME:ARG`` fills, whether ARG is required).
SPEECH_SHORT_NAMES = {
    'espeak': ('EspeakSpeech', 'voice', False),
    'piper': ('PiperSpeech', 'model', True),
    'edge': ('EdgeSpeech', 'voice', False),
    'azure': ('AzureSpeech', 'voice', False),
    'none': ('SilentSpeech', None, False),
}


def build_speech(spec='espeak', **kwargs):
    """A speech backend from ``espeak[:VOICE]``, ``piper:MODEL``, ``edge[:VOICE]``,
    ``azure[:VOICE]``, ``none`` or a config dict; ``kwargs`` go to its constructor."""
    from .registry import build_backend
    return build_backend(SPEECH_BACKENDS, spec, SPEECH_SHORT_NAMES, '--speech', **kwargs)
