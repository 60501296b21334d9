"""Command-line plumbing shared by tools/: the one-line errors (UserError, RunError,
Interrupted), notes, the argument parser, option checks, and run_cli, which prints a
user's mistake as one line instead of a traceback (once per machine under a launcher).

Beside it: config_loading.py (reading a config), cfg_options.py (--cfg-options),
foreign_flags.py (other projects' flags and keys), error_messages.py (the one-line
messages run_cli prints for errors met while running)."""
import argparse
import difflib
import itertools
import os
import os.path as osp
import signal
import sys

from mmsora.utils.foreign_flags import (FOREIGN_FLAGS, FOREIGN_HINTS, FOREIGN_VALUES,
                                         FOREIGN_WORDS, WHOLE_NUMBER, Sentence, model_config,
                                         whole_number)

__all__ = ['UserError', 'UserPathNotFound', 'RunError', 'ArgumentParser', 'is_launch_rank0',
           'note', 'is_first_on_machine', 'torchrun_processes', 'check_torchrun_launcher', 'plural',
           'first_line', 'add_malloc_option', 'keep_freed_memory_on_cpu', 'checkpointing_setting',
           'device_setting', 'read_user_text', 'check_at_least', 'check_output_path', 'add_note',
           'check_samples_not_finished', 'Interrupted', 'run_cli']


class UserError(Exception):
    """A mistake in what the user gave (path, option, config); printed as one line."""


class UserPathNotFound(UserError, FileNotFoundError):
    """A path the user gave (an option's, a config's) that does not exist: a
    UserError (said once per machine under a launcher, see :func:`run_cli`) that the
    callers catching FileNotFoundError still catch."""


class RunError(Exception):
    """A run stopped for a reason outside the code (full disk, diverging loss);
    printed as one line."""


# What a stand-in (ArgumentParser's ``stand_ins``) may say after its placeholder:
# another project's name of the flag takes values that are not ours (SiT's
# --sampling-method Euler), so the placeholder stands for them; the flag takes several
# values (KEY=VALUE ...), so the template's word holding ``{}`` is said for each.
THEIR_VALUES = 'their values'
EACH_VALUE = 'each value'


def _takes(marks, text: str) -> bool:
    """Whether a stand-in of ``marks`` takes ``text`` as its value as it is."""
    for mark in marks:
        if mark == WHOLE_NUMBER and not whole_number(text):
            return False
        if callable(mark):
            try:
                mark(text)
            except ValueError:
                return False
    return True


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (``PROG: error: ...; see python
    tools/infer.py --help``, the script as it was run: :meth:`help_command`; without
    argparse's usage block, exit status 2) and whose 'unrecognized
    arguments' error names the option meant: one spelt with underscores
    (``--cfg_scale``), a near miss (``--num-sample``), or another project's name for it
    (DiT's ``--ckpt``, ``--num-sampling-steps``; SiT's ``--path-type`` and its mode
    word ``SDE``; diffusers' ``--guidance-scale``), with our value for theirs where
    their values are not ours (SiT's ``--sampling-method Heun`` by the mode word on the
    command line: ``FOREIGN_VALUES``). Another project's name is looked up before a
    close spelling (SiT's ``--prediction`` is not ``--precision``).

    ``stand_ins``: what a tool gives for another tool's flag that it lacks, by flag:
    ``(template, placeholder, *marks)``, ``{}`` in the template taking the value given
    after the flag, else the placeholder; marks: :data:`THEIR_VALUES` (the placeholder
    for the value given to another project's name of the flag, whose values are not
    ours, unless ``FOREIGN_VALUES`` has ours for it), :data:`EACH_VALUE` (the word of
    ``{}`` once for each value given: ``--sampler-options atol=1e-6 rtol=1e-3``),
    ``foreign_flags.WHOLE_NUMBER`` (the placeholder for a value that is no whole number),
    a callable (our value for the one given: ``foreign_flags.one_minus_decay``, Stable
    Cascade's ``--ema-beta 0.9999`` as momentum 0.0001; its ValueError says what the
    flag takes, and the line says that with the placeholder's key instead)
    (tools/test.py: ``--cfg-scale 1.5`` is ``--cfg-options
    evaluation.sample_cfg.cfg_scale=1.5`` there); looked up before a close spelling, for
    other projects' names of the flag too (SiT's ``--num-sampling-steps`` is
    ``--steps``, which argparse's near match took for ``--num-samples``)."""

    def __init__(self, *args, stand_ins=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stand_ins = dict(stand_ins or {})
        self._given = []
        self._occurrence = 0  # (of the flag error() reads: _given_value)

    def parse_known_args(self, args=None, namespace=None):
        # (the whole command line, for the hints: a mode word that a positional took,
        # SiT's ``tools/test.py CONFIG SDE``, is not among the unrecognized arguments)
        self._given = [str(a) for a in (sys.argv[1:] if args is None else args)]
        return super().parse_known_args(args, namespace)

    def _stand_in(self, flag: str, values=(), given: str = None, *, read=True) -> str:
        """The text of ``flag``'s stand-in with ``values``, the values given after the
        flag (none: the placeholder), given to the flag ``given`` (another project's
        name of it, or ``flag``); a :class:`Sentence` saying what the flag takes where a
        callable mark refuses the value given. ``read=False``: the placeholder, the
        command line not read."""
        template, placeholder, *marks = self.stand_ins[flag]
        ours = [mark for mark in marks if callable(mark)]
        if (WHOLE_NUMBER in marks or ours) and read and not (
                values and _takes(marks, str(values[0]))):
            # (the word after the flag on the command line: where the flag came first,
            # argparse took its value for the config, and the config came here instead
            # or nothing, where the config was given to --fsdp; a value it takes is
            # this occurrence's own, where the flag is given twice)
            value = self._given_value(given or flag)
            values = [value] if value is not None else values
        if not values or (THEIR_VALUES in marks and given not in (None, flag)) or (
                WHOLE_NUMBER in marks and not whole_number(str(values[0]))):
            values = [placeholder]
        elif ours:  # (our value for theirs: --ema-beta 0.9999 is momentum 0.0001)
            value = values[0]
            try:
                values = [ours[0](value) if value else placeholder]
            except ValueError as e:  # (what the flag takes; the key, with the placeholder)
                return Sentence(f'{given or flag} is {e}, not {value}: give '
                                f'{self._stand_in(flag, read=False)}')
        elif EACH_VALUE not in marks:
            values = values[:1]
        else:  # (KEY=VALUE entries: a word after them is the next positional, SDE)
            values = list(itertools.takewhile(lambda v: '=' in v, values)) or [placeholder]
        words = template.split(' ')
        for i, word in enumerate(words):
            if '{}' in word:
                words[i] = ' '.join(word.replace('{}', str(value)) for value in values)
                break
        return ' '.join(words)

    def error(self, message):
        prefix = 'unrecognized arguments: '
        if message.startswith(prefix):
            tokens = message[len(prefix):].split()
            # (the values after a flag too: --model SiT-XL/2; the token before a word: a
            # flag's value is no mode word)
            hints = []
            for i, token in enumerate(tokens):
                # (which occurrence of its flag this token is: _given_value reads that one)
                name = token.partition('=')[0].replace('_', '-')
                self._occurrence = sum(t.partition('=')[0].replace('_', '-') == name
                                       for t in tokens[:i])
                hints.append(self._meant(token, tokens[i + 1:])
                             or self._word_meant(token, tokens[i - 1] if i else None))
            self._occurrence = 0
            hints = [h for h in hints if h]
            meant = [h for h in hints if not isinstance(h, Sentence)]
            if meant:
                message += f' (did you mean {"; ".join(meant)}?)'
            message += ''.join(f'; {h}' for h in hints if isinstance(h, Sentence))
        # (argparse printed its whole usage block first: 17 lines on tools/infer.py)
        if any('--help' in action.option_strings for action in self._actions):
            message += f'; see {self.help_command()} --help'
        self.exit(2, f'{self.prog}: error: {message}\n')

    def help_command(self):
        """The command that runs this parser's script: ``python tools/infer.py`` as it
        was run, where the prog is that script's file name (argparse's default,
        ``infer.py``, which is no command from the repository's root); the prog itself
        where it is another (``prog=``, a subcommand's)."""
        run = sys.argv[0] if sys.argv else ''
        if not run or self.prog != osp.basename(run):
            return self.prog
        return f'python {run}' if run.endswith('.py') else run

    def _ours(self):
        """This parser's long options."""
        return [o for action in self._actions for o in action.option_strings
                if o.startswith('--')]

    def _word_meant(self, token: str, before: str = None):
        """What a word that is no option meant (SiT's mode word ``SDE``), or None;
        ``before``: the token before it (a word after a flag is its value)."""
        needs, hint = FOREIGN_WORDS.get(token, (None, None))
        if needs is None or _flag_value(before):
            return None
        # (the hint's value, its sampler: the one of the method given with it, if any)
        value = self._word_value(token, needs) or hint.split(' ', 1)[1]
        if needs in self.stand_ins:
            return f'{self._stand_in(needs, [value])} for {token}'
        return f'{needs} {value} for {token}' if needs in self._ours() else None

    def _word_value(self, token: str, needs: str):
        """Our value of ``needs`` for the mode word ``token`` with another project's
        name of ``needs`` given on the command line (``SDE --sampling-method Heun``:
        sde_heun), or None."""
        for flag, ours in FOREIGN_VALUES.items():
            value = self._given_value(flag)
            if FOREIGN_FLAGS.get(flag) == needs and value is not None:
                return ours(value, token)
        return None

    def _mode_word(self):
        """The mode word (a ``FOREIGN_WORDS`` key, SiT's ``SDE``) on the command line, no
        flag's value, or None."""
        for before, token in zip([None] + self._given, self._given):
            if token in FOREIGN_WORDS and not _flag_value(before):
                return token
        return None

    def _given_value(self, flag: str):
        """The value given to ``flag`` (spelt with dashes or underscores) on the command
        line, at the occurrence of the flag being read (:meth:`error`: a flag given twice
        has two), or None."""
        skip = getattr(self, '_occurrence', 0)
        for token, after in zip(self._given, self._given[1:] + [None]):
            name, equals, value = token.partition('=')
            if name.replace('_', '-') == flag:
                if skip:
                    skip -= 1
                    continue
                return value if equals else (None if after is None or after.startswith('--')
                                             else after)
        return None

    def _meant(self, token: str, following=()):
        """What ``token`` meant; ``following``: the tokens after it (a flag's values up
        to the next option). A :class:`Sentence` is said on its own, not as a 'did you
        mean'."""
        if not token.startswith('--'):
            return None
        flag, equals, value = token.partition('=')
        values = [value] * bool(equals) + list(
            itertools.takewhile(lambda t: not t.startswith('--'), following or ()))
        value = values[0] if values else None
        ours = self._ours()
        dashed = flag.replace('_', '-')
        # (our value for another project's: SiT's --sampling-method Euler by its mode word)
        theirs = FOREIGN_FLAGS.get(dashed)
        translated = FOREIGN_VALUES[dashed](value, self._mode_word()) \
            if dashed in FOREIGN_VALUES and value is not None else None
        for guess in (dashed, theirs):
            if guess in ours and guess != flag:
                said = f' {translated}' if translated and guess == theirs else ''
                return f'{guess}{said} for {flag}'
        for guess in (dashed, theirs):
            if guess in self.stand_ins:
                text = self._stand_in(guess, [translated]) if translated and guess == theirs \
                    else self._stand_in(guess, values, dashed)
                return text if isinstance(text, Sentence) else f'{text} for {flag}'
        hints = FOREIGN_HINTS.get(dashed, ())
        for needs, hint in (hints,) if hints and isinstance(hints[0], str) else hints:
            if needs in ours:
                if dashed == '--model' and model_config(value):
                    hint = model_config(value)
                return hint if isinstance(hint, Sentence) else f'{hint} for {flag}'
        close = difflib.get_close_matches(flag, ours, n=1, cutoff=0.75)
        return f'{close[0]} for {flag}' if close else None


def _flag_value(before) -> bool:
    """Whether a token after ``before`` is its value: ``before`` is an option
    without ``=`` (a word after ``--mode`` is no mode word)."""
    return before is not None and before.startswith('--') and '=' not in before


def is_launch_rank0() -> bool:
    """Whether this process is rank 0 of its launch (torchrun's RANK, srun's
    SLURM_PROCID; a lone process is), read before any process group exists: for the
    notes a tool prints once, not once per process."""
    return os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0')) == '0'


_NOTED = set()


def note(text: str, once: bool = False) -> None:
    """Print ``note: TEXT`` on standard error, once per launch (rank 0's); ``once``:
    not again in this process (a config the tool loads twice)."""
    if once and text in _NOTED:
        return
    _NOTED.add(text)
    if is_launch_rank0():
        say(f'note: {text}')


def say(*lines: str) -> None:
    """Print ``lines`` on standard error in one write: the processes of a launch share
    the stream, and a ``print`` writes its text and its newline apart, so two processes'
    lines could run together (``...againerror: ...``) and lose their line breaks."""
    sys.stderr.write(''.join(f'{line}\n' for line in lines))
    sys.stderr.flush()


def is_first_on_machine() -> bool:
    """Whether this process is the first of its machine in a launch (torchrun's
    LOCAL_RANK, srun's SLURM_LOCALID; a lone process is): for a mistake every process
    of a launch finds alike (the config's), said once per machine, not by each."""
    if 'LOCAL_WORLD_SIZE' in os.environ:  # torchrun's (inside a slurm job too)
        return os.environ.get('LOCAL_RANK', '0') == '0'
    if 'SLURM_LOCALID' in os.environ:  # srun's tasks (before compat._slurm_env sets
        return os.environ['SLURM_LOCALID'] == '0'  # LOCAL_RANK from it)
    return os.environ.get('LOCAL_RANK', '0') == '0'


def torchrun_processes() -> int:
    """How many processes torchrun started this one among (its WORLD_SIZE; 1 without
    torchrun)."""
    world = os.environ.get('WORLD_SIZE', '1')
    return int(world) if world.isdigit() else 1


def check_torchrun_launcher(launcher: str) -> None:
    """A tool under torchrun without ``--launcher``: every process sampled every item
    into the same files (one stopped on another's .tmp.npz), or trained the whole run
    alone into the same work dir."""
    world = torchrun_processes()
    if launcher == 'none' and world > 1:
        raise UserError(f'started as one of {world} torchrun processes without --launcher: '
                        'add --launcher pytorch (each process then does its share)')


def plural(n: int, word: str) -> str:
    """'1 frame', '5 frames'."""
    return f'{n} {word}{"s" * (n != 1)}'


def first_line(error: BaseException) -> str:
    """An error's message in a few words: its first non-empty line, or the exception's
    class name when it has no message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def add_malloc_option(parser) -> None:
    """``--default-malloc`` of the tools that run models (train, infer, test, benchmark)
    and of text2video."""
    parser.add_argument('--default-malloc', action='store_true',
                        help="on the CPU, leave glibc's malloc as it is (default there: "
                        'it keeps the memory a step frees for the next one instead of '
                        'faulting fresh pages in: faster steps; the peak can be higher, '
                        '+1%% training DiT-S/2, more where steps differ in size)')


def keep_freed_memory_on_cpu(args, on_cpu: bool) -> bool:
    """In a process whose heavy work runs on the CPU (models; text2video's composition),
    keep glibc's freed memory for reuse (``mmsora.engine.strategies.keep_freed_cpu_memory``)
    unless ``--default-malloc`` was given. Returns whether it was set."""
    if not on_cpu or args.default_malloc:
        return False
    from mmsora.engine.strategies import keep_freed_cpu_memory
    return keep_freed_cpu_memory()


def checkpointing_setting(text: str):
    """argparse ``type`` of ``--grad-checkpointing``: ``'selective'`` or a block interval
    K >= 0 (0: none, 1: every block), as the denoisers' ``grad_checkpointing``."""
    import argparse
    if text == 'selective':
        return text
    try:
        k = int(text)
    except ValueError:
        k = -1
    if k < 0:
        raise argparse.ArgumentTypeError(
            f"expected 'selective' or a block interval K >= 0, got {text!r}")
    return k


def device_setting(text: str) -> str:
    """argparse ``type`` of the tools' ``--device``: a torch device (``cpu``, ``cuda``,
    ``cuda:1``, ...) that this machine has."""
    import argparse

    import torch
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f'expected cpu, cuda or cuda:N, got {text!r}') from None
    backend = getattr(torch, device.type, None)
    if device.type != 'cpu' and not (backend and backend.is_available()):
        raise argparse.ArgumentTypeError(f'{text}: no {device.type} device on this machine')
    if (device.type == 'cuda' and device.index is not None
            and device.index >= torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(
            f'{text}: this machine has {torch.cuda.device_count()} CUDA device(s)')
    return text


def read_user_text(path, option: str) -> str:
    """The text of a file the user names with ``option`` (a prompt file, a caption
    file): UTF-8, a byte-order mark dropped. One that is not UTF-8, or cannot be read,
    is one line naming the option; FileNotFoundError passes through (a caller may take
    a missing file for none)."""
    try:
        with open(path, encoding='utf-8-sig') as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f'{option}: {path} is not UTF-8 text ({e.reason} at byte '
                        f'{e.start}): save it as UTF-8') from None
    except FileNotFoundError:
        raise
    except OSError as e:
        raise UserError(f'{option}: cannot read {path}: {e.strerror or e}') from None


def check_at_least(args, names, least=1) -> None:
    """Refuse an option of ``args`` below its least value, named as it is spelt on the
    command line (``--batch-size must be >= 1, got 0``); an option left unset (None)
    passes. ``names``: option names (``'batch_size'``) that must be at least
    ``least``, or a dict of each name's own least."""
    limits = names if isinstance(names, dict) else dict.fromkeys(names, least)
    for name, lowest in limits.items():
        value = getattr(args, name)
        if value is not None and value < lowest:
            raise UserError(f'--{name.replace("_", "-")} must be >= {lowest}, got {value}')


def check_output_path(path, option: str, folder: bool = False) -> None:
    """Refuse, before the work that ends in writing it, an output ``path`` that
    cannot be written: one whose folder runs into an existing file (``x.jpg/out.json``),
    an existing folder where a file is wanted, or one under a folder this process may
    not write in (read-only, another user's, ``/proc``). ``folder``: ``path`` is a
    folder."""
    if path is None:
        return
    probe = osp.abspath(path if folder else osp.dirname(osp.abspath(path)))
    while not osp.exists(probe):
        probe = osp.dirname(probe)
    if not osp.isdir(probe):
        raise UserError(f'{option} {path}: {probe} is a file, not a folder')
    if not folder and osp.isdir(path):
        raise UserError(f'{option} {path} is a folder; give a file name')
    import tempfile
    try:  # a file with no name where the system allows it (O_TMPFILE): nothing is left
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise UserError(f'{option} {path}: cannot write in {probe} ({e.strerror})') from None


def add_note(exc: BaseException, text: str) -> None:
    """Add ``text`` under ``exc``'s traceback (Python 3.11's ``add_note``; printed to
    stderr at once on 3.10, which has none)."""
    if hasattr(exc, 'add_note'):
        exc.add_note(text)
    else:
        say(text)


def check_samples_not_finished(path, option: str = '--out') -> None:
    """Refuse a mass sampling's ``.npz`` that exists: a finished run's (its shards
    are gone once it is written), which the same command run again, or another run's
    ``--out``, sampled over and replaced without a word. (tools/test.py first scores a
    file whose run was stopped while scoring: ``mass_sampling`` keeps its record.)"""
    if path is not None and osp.isfile(path):
        raise UserError(f'{option} {path} exists: the samples of a finished run are not '
                        'sampled over; delete it, or give another name')


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM), with what there is to do next in the tool's words (its
    message); ``exit_code`` is what :func:`run_cli` exits with (130, as a shell
    reports SIGINT; 143 for SIGTERM, which run_cli exits with after a SIGTERM its own
    handler took, whatever the code), and ``quiet`` leaves its line to another
    process (the first of a multi-process run says it)."""

    def __init__(self, message: str = '', exit_code: int = 130, quiet: bool = False):
        super().__init__(message)
        self.exit_code, self.quiet = exit_code, quiet


# How long a process other than the first of its machine waits, after a UserError,
# for the launcher to stop it: torchrun, and srun --kill-on-bad-exit (as
# tools/slurm_train.sh starts it), stop every process once one has failed.
LAUNCHER_GRACE_S = 30


def _said_by_first_on_machine(sigterm=None) -> bool:
    """After a :class:`UserError` in a process that is not the first of its machine:
    whether the first one says it. Waits up to ``LAUNCHER_GRACE_S`` for the launcher
    to stop this process, which it does once the first has failed (exiting at once
    let torchrun kill the first before it printed); still here after that, the
    mistake is this process's alone (False). ``sigterm``: run_cli's handler, whose
    SIGTERM (the launcher's) ends the wait, or has come already."""
    if is_first_on_machine():
        return False
    import time
    try:
        if sigterm is not None:
            sigterm.armed = True  # (a SIGTERM from here on raises; one before, noted)
            if sigterm.came:
                return True
        time.sleep(LAUNCHER_GRACE_S)
    except KeyboardInterrupt:  # the launcher's SIGTERM, as run_cli's handler raises it
        return True
    finally:
        if sigterm is not None:
            sigterm.armed = False
    return False


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is (:class:`_SigtermAsCtrlC`): the tools' cleanup on
    KeyboardInterrupt runs for it too; ``exit_code`` is a shell's for SIGTERM."""
    exit_code = 143


class _SigtermAsCtrlC:
    """:func:`run_cli`'s SIGTERM handler: the first SIGTERM raises :class:`_Terminated`
    in the main thread while ``armed`` (while the tool runs; run_cli's own wait for
    the launcher); ``came`` records it, ``raised`` that it was raised. Further ones
    change nothing: a launcher passes on the one its processes got (slurm signals them
    as well as torchrun), and a second raise would break off the cleanup under way (a
    part file's removal, the line). A process this one forks (a data-loader worker
    before torch's own handlers are set) ends on SIGTERM as it would without the
    handler."""

    def __init__(self):
        self.came = self.raised = self.armed = False
        self.pid = os.getpid()

    def __call__(self, signum, frame):
        if os.getpid() != self.pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not self.came:
            self.came = True
            if self.armed:
                self.raised = True
                raise _Terminated

    def install(self) -> bool:
        """Take SIGTERM where it has the default action (a handler of the tool's own,
        training's graceful stop, replaces this one later and puts it back when done; one
        ignored by whoever started the process stays ignored) and this is the main
        thread (the only one Python gives handlers). Returns whether it did."""
        import threading
        if threading.current_thread() is not threading.main_thread() or \
                signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
            return False
        signal.signal(signal.SIGTERM, self)
        return True

    def uninstall(self) -> None:
        """Give SIGTERM its default action back, unless the tool has set another one
        since (training ignores further SIGTERMs once one has stopped it)."""
        if signal.getsignal(signal.SIGTERM) is self:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_cli(main):
    """Run ``main()``; print user mistakes as one ``error:`` line and exit 2, and
    Ctrl-C as one ``interrupted`` line (with what to do next, where the tool says it:
    :class:`Interrupted`) and exit 130, as a shell reports SIGINT.

    SIGTERM (``timeout``, ``docker stop``, systemd, slurm, torchrun passing one on) is
    taken as Ctrl-C, unless the tool sets a handler of its own (``tools/train.py``'s
    graceful stop) or SIGTERM is ignored: a KeyboardInterrupt is raised in the main
    thread, so the same cleanup runs (a part file removed, a finished shard kept), and
    the line is ``interrupted by SIGTERM`` with the tool's words, exit 143, as a shell
    reports SIGTERM. Further SIGTERMs change nothing. The handler is taken off when
    ``main`` returns.

    Under a launcher a :class:`UserError` is said once per machine, by its first
    process (:func:`is_first_on_machine`), not once per process: it is raised from
    what every process of a launch is given alike (the command line, the config, the
    files they share) before any collective, so each process meets the same one. The
    others wait, without a word, for the launcher to stop them (exit 2: the handler
    turns its SIGTERM into KeyboardInterrupt); one still running
    ``LAUNCHER_GRACE_S`` later met a mistake of its own, and says it. Every other error
    (a RunError, an OSError) can be one process's alone (its own disk, its own file)
    and is said by each process that meets it.

    Set ``MMSORA_DEBUG=1`` to get the full traceback instead.
    """
    sigterm = _SigtermAsCtrlC()
    installed = sigterm.install()
    try:
        return _run(main, sigterm)
    finally:
        if installed:
            sigterm.uninstall()


def _run(main, sigterm: _SigtermAsCtrlC) -> int:
    """:func:`run_cli`'s work, ``sigterm`` its handler (whether a SIGTERM came)."""
    try:
        sigterm.armed = True
        try:
            main()
        finally:  # (a SIGTERM while run_cli says what stopped main is noted, not raised
            sigterm.armed = False  # as a KeyboardInterrupt's traceback over it)
    except KeyboardInterrupt as e:
        from mmsora.utils.dist import abandon_process_group
        abandon_process_group()
        if os.environ.get('MMSORA_DEBUG'):
            raise
        # (a tool's Interrupted made from the KeyboardInterrupt may keep 130)
        by = ' by SIGTERM' if sigterm.raised else ''
        if not getattr(e, 'quiet', False):
            say(f'interrupted{by}{f" {e}" if str(e) else ""}')
        return 143 if sigterm.raised else getattr(e, 'exit_code', 130)
    except Exception as e:
        from mmsora.utils.dist import abandon_process_group
        from mmsora.utils.error_messages import explain_error  # (it imports this module)
        abandon_process_group()  # else gloo may abort at exit over the live group
        message = explain_error(e)
        if message is None or os.environ.get('MMSORA_DEBUG'):
            raise
        if isinstance(e, UserError) and _said_by_first_on_machine(sigterm):
            return 2
        # (add_note's notes: what to do next; one write with the line they follow)
        say(f'error: {message}', *getattr(e, '__notes__', ()))
        return 2
    return 0
