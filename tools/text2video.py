"""Text to narrated video: ``python tools/text2video.py story.txt --out story.mp4``.

Splits the text into sentences and subtitle-sized segments, speaks each segment, groups
segments into shots of at least ``--shot-seconds``, makes one picture per shot, and
writes an H.264 + AAC mp4 with a slow pan/zoom, cross-fades and burned-in subtitles. With no
options everything runs offline: eSpeak NG speaks, procedural title cards illustrate.

Examples:
    python tools/text2video.py story.txt --out story.mp4
    python tools/text2video.py story_zh.txt --out story_zh.mp4 --resolution 720p
    # pictures from a trained mmsora model (class-conditional: shots cycle the labels;
    # text-conditioned: each shot is sampled from its prompt)
    python tools/text2video.py story.txt \
        --pictures mmsora:work_dirs/dit_tiny2_1xb32_1500_shapes16
    # a local diffusers pipeline folder, a neural voice, cloud options
    python tools/text2video.py story.txt --pictures diffusers:checkpoints/sd-turbo --steps 2
    python tools/text2video.py story.txt --speech piper:voices/en_US-lessac-medium.onnx
    python tools/text2video.py story.txt --speech azure --pictures openai
"""
import argparse
import importlib
import math
import os.path as osp
import sys

from mmsora.utils.cli import (ArgumentParser, UserError, add_malloc_option, device_setting,
                              keep_freed_memory_on_cpu, run_cli)


class Text2VideoParser(ArgumentParser):
    """The tools' parser, whose 'unrecognized arguments' hint also knows other
    text-to-speech tools' voice options.

    Before, ``--voice en-gb`` got '(did you mean --device for --voice?)', a near miss
    by spelling; the voice is chosen with ``--speech espeak:VOICE``.
    """

    # other tools' flag -> ours (mmsora.utils.foreign_flags.FOREIGN_FLAGS maps one option to
    # another; these map to an option with its value)
    FOREIGN = {'--voice': '--speech espeak:VOICE', '--tts': '--speech'}

    def _meant(self, token: str, following=None):
        flag, _, value = token.partition('=')
        meant = self.FOREIGN.get(flag.replace('_', '-'))
        if token.startswith('--') and meant:
            if value and meant.endswith(':VOICE'):
                meant = meant.replace('VOICE', value)
            return f'{meant} for {flag}'
        return super()._meant(token, following)


def finite_number(text: str) -> float:
    """argparse ``type`` of the float options: a finite number. Before, ``--fps nan``
    failed once the pictures were made ('cannot convert float NaN to integer', naming no
    option), ``--zoom inf`` with a traceback, and ``--shot-seconds nan`` put the whole
    text in one shot."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'expected a finite number, got {text!r}')
    return value


def parse_args(argv=None):
    parser = Text2VideoParser(description='Turn a text into a narrated video')
    parser.add_argument('text', help="text file (UTF-8), or '-' for standard input")
    parser.add_argument('--out', default=None, help='the mp4 (default: TEXT with .mp4; '
                        'story.mp4 for standard input)')
    parser.add_argument('--speech', default='espeak',
                        help='espeak[:VOICE] (offline, default), piper:VOICE.onnx (local '
                        'voice), edge[:VOICE], azure[:VOICE] (cloud), none (silent)')
    parser.add_argument('--rate', type=int, default=160,
                        help='speaking rate in words per minute (espeak, none)')
    parser.add_argument('--pictures', default='titlecard',
                        help='titlecard (offline, default), mmsora:RUN (work dir, config '
                        'or checkpoint), diffusers:DIR (local pipeline), openai[:MODEL]')
    parser.add_argument('--checkpoint', help='mmsora:CONFIG or WORK_DIR: the checkpoint to '
                        'sample (not with a checkpoint as RUN)')
    parser.add_argument('--labels', type=int, nargs='+',
                        help='class ids that shots cycle through (class-conditional models)')
    parser.add_argument('--steps', type=int, help='sampling steps (mmsora, diffusers)')
    parser.add_argument('--cfg-scale', type=finite_number,
                        help='guidance scale (mmsora, diffusers)')
    parser.add_argument('--seed', type=int,
                        help='shot i uses seed SEED + i (mmsora, diffusers; default 0)')
    parser.add_argument('--device', type=device_setting,
                        help='device for model pictures (default: cuda if any)')
    add_malloc_option(parser)  # the composition's frames, and model pictures on the CPU
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='mmsora: override config entries (e.g. the text encoder '
                        'folder, model.text_encoder.pretrained_path=DIR)')
    parser.add_argument('--language', default='auto',
                        help="auto (from the text's script: en, zh, ru, ja, ...; default) or "
                        'a language code for the default voice, e.g. de')
    parser.add_argument('--resolution', default='480p', help='480p, 720p, 1080p or WxH')
    parser.add_argument('--fps', type=finite_number, default=24)
    parser.add_argument('--shot-seconds', type=finite_number, default=4.0,
                        help='a picture stays for segments lasting at least this long '
                        '(0: one picture per segment)')
    parser.add_argument('--max-chars', type=int, default=90,
                        help='cut longer sentences at commas (a CJK character counts 2)')
    parser.add_argument('--pause', type=finite_number, default=0.3,
                        help='seconds of silence after each segment')
    parser.add_argument('--fade', type=finite_number, default=0.5,
                        help='cross-fade seconds')
    parser.add_argument('--zoom', type=finite_number, default=1.12,
                        help='pan/zoom strength (1: still pictures)')
    parser.add_argument('--no-subtitles', action='store_true',
                        help='no subtitles (title cards then show the text instead)')
    parser.add_argument('--font', help='font file for subtitles and title cards '
                        '(Chinese needs a CJK font)')
    parser.add_argument('--prompt-template', default=None,
                        help="image prompt with {text}, e.g. '{text}, watercolor'")
    parser.add_argument('--prompt-rewriter', metavar='MODULE:FUNCTION',
                        help='a function text -> prompt (e.g. an LLM call) used instead '
                        'of the template')
    return parser.parse_args(argv)


def read_text(path):
    """The text of ``path`` (``'-'``: standard input), without a leading UTF-8 byte
    order mark. Before, the mark (saved by Windows editors) was kept in the first
    segment's text ('\\ufeffHello')."""
    if path == '-':  # (as bytes: a non-UTF-8 text got through as surrogates, to fail
        # in the speech backend)
        if not hasattr(sys.stdin, 'buffer'):  # a text stream put in its place
            return sys.stdin.read().lstrip('\ufeff')
        data = sys.stdin.buffer.read()
        try:
            return data.decode('utf-8-sig')
        except UnicodeDecodeError as e:
            raise UserError(f'standard input is not UTF-8 text ({e.reason} at byte '
                            f'{e.start}): save it as UTF-8') from None
    try:
        with open(path, encoding='utf-8-sig') as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f'text file not found: {path}') from None
    except UnicodeDecodeError:
        raise UserError(f'{path} is not UTF-8 text') from None


def load_rewriter(spec):
    module_name, _, function = spec.partition(':')
    if not function:
        raise UserError(f'--prompt-rewriter {spec!r}: write it as MODULE:FUNCTION')
    try:
        rewriter = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as e:
        # python puts tools/ on sys.path, not the current folder: a rw.py beside the text
        # is not found (and the current folder is not added behind the user's back)
        missing = getattr(e, 'name', None)  # (not a module that rw.py itself imports)
        hint = ('; the module must be importable: put its folder on PYTHONPATH (e.g. '
                'PYTHONPATH=. python tools/text2video.py ...)'
                if isinstance(e, ModuleNotFoundError) and missing
                and (module_name + '.').startswith(missing + '.') else '')
        raise UserError(f'--prompt-rewriter {spec!r}: {e}{hint}') from None
    if not callable(rewriter):
        raise UserError(f'--prompt-rewriter {spec!r} is not a function')
    return rewriter


# Picture options and the backends that take them (constructor argument names).
PICTURE_OPTIONS = {
    'checkpoint': ('checkpoint', ('mmsora',)),
    'seed': ('seed', ('mmsora', 'diffusers')),
    'labels': ('labels', ('mmsora', 'diffusers')),
    'steps': ('num_steps', ('mmsora', 'diffusers')),
    'cfg_scale': ('cfg_scale', ('mmsora', 'diffusers')),  # diffusers: guidance_scale
    'device': ('device', ('mmsora', 'diffusers')),
    'cfg_options': ('cfg_options', ('mmsora',)),
    'font': ('font', ('titlecard',)),
}


def picture_options(args):
    """Constructor arguments of the chosen picture backend, from the options given.

    Raises:
        UserError: an option given that the chosen backend does not use.
    """
    name = args.pictures.partition(':')[0]
    options = {}
    if name == 'titlecard':  # the text twice on every frame, big and in the subtitle
        options['show_text'] = args.no_subtitles
    for option, (argument, backends) in PICTURE_OPTIONS.items():
        value = getattr(args, option)
        if value is None or value == []:
            continue
        if name == 'diffusers' and option == 'cfg_scale':
            options['guidance_scale'] = value
        elif name in backends:
            options[argument] = value
        elif option != 'font':  # the font also serves the subtitles
            raise UserError(f'--{option.replace("_", "-")} is for --pictures '
                            f'{" / ".join(backends)}, not {name}')
    return options


def main(argv=None):
    args = parse_args(argv)
    from mmsora.apis.text2video import (Composer, build_pictures, build_speech,
                                        parse_resolution, text_to_video)
    from mmsora.apis.text2video.pipeline import check_options, drawn_from, plan_segments
    from mmsora.apis.text2video.segmentation import DEFAULT_PROMPT_TEMPLATE
    for name in ('fps', 'max_chars', 'rate'):
        if getattr(args, name) <= 0:
            raise UserError(f'--{name.replace("_", "-")} must be > 0')
    if args.fade < 0:
        raise UserError(f'--fade must be >= 0 (0: cuts), got {args.fade:g}')
    if args.zoom < 1:
        raise UserError(f'--zoom must be >= 1 (1: still pictures), got {args.zoom:g}')
    if args.steps is not None and args.steps < 1:
        raise UserError('--steps must be >= 1')
    if args.cfg_scale is not None and args.cfg_scale < 0:
        raise UserError(f'--cfg-scale must be >= 0 (1: no guidance), got {args.cfg_scale:g}')
    out = args.out or ('story.mp4' if args.text == '-' else
                       osp.splitext(args.text)[0] + '.mp4')
    template = args.prompt_template or DEFAULT_PROMPT_TEMPLATE
    # before any speech or sampling: these failed after them
    check_options(out, args.shot_seconds, args.pause, template, args.language)
    options = picture_options(args)  # (an option the backend does not take, e.g. --seed)
    text = read_text(args.text)
    # a text with nothing to say, before any backend is built (a model loaded first)
    plan_segments(text, args.max_chars)
    rewriter = load_rewriter(args.prompt_rewriter) if args.prompt_rewriter else None
    composer = Composer(parse_resolution(args.resolution), fps=args.fps, fade=args.fade,
                        zoom=args.zoom, subtitles=not args.no_subtitles, font=args.font)
    speech_name = args.speech.partition(':')[0]
    speech = build_speech(args.speech, **({'words_per_minute': args.rate}
                                          if speech_name in ('espeak', 'none') else {}))
    # The composition (and model pictures without a GPU) runs on the CPU: per frame
    # arrays above glibc's mmap threshold were fresh pages each time (docs/text2video.md)
    keep_freed_memory_on_cpu(args, on_cpu=True)
    pictures = build_pictures(args.pictures, **options)
    result = text_to_video(text, out, speech=speech, pictures=pictures,
                           language=args.language, composer=composer,
                           shot_seconds=args.shot_seconds, max_chars=args.max_chars,
                           pause=args.pause,
                           prompt_template=template,
                           prompt_rewriter=rewriter)
    timeline = result.timeline
    shots, segments = len(result.shots), len(timeline['segments'])
    print(f'saved {out}: {timeline["duration"]:.1f} s, {shots} shot{"s" * (shots != 1)}, '
          f'{segments} segment{"s" * (segments != 1)}, {composer.size[0]}x{composer.size[1]} '
          f'at {args.fps:g} fps ({result.language})')
    for shot, (start, end) in zip(result.shots, timeline['shots']):
        print(f'  shot {shot.index + 1}, {start:.1f}-{end:.1f} s: {drawn_from(pictures, shot)}')


if __name__ == '__main__':
    sys.exit(run_cli(main))
