"""Checks of the one-line messages the tools give, shared by the tests, a tool of tools/
loaded as a module, and tools/train.py stopped at its start-up by a failing disk."""
import importlib.util
import os
import os.path as osp

import pytest

from mmsora.utils.cli import UserError
from mmsora.utils.error_messages import explain_error
from tests.conftest import REPO_ROOT


def load_tool(name):
    """tools/NAME.py as a fresh module, to run its ``main`` or its functions in this
    process (a process start-up costs seconds)."""
    spec = importlib.util.spec_from_file_location(
        f'mmsora_tool_{name}', osp.join(REPO_ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refused(main, argv) -> str:
    """The message of the UserError that a tool's ``main(argv)`` raises."""
    with pytest.raises(UserError) as info:
        main(argv)
    return str(info.value)


def train_args_refusal(capsys, argv) -> str:
    """tools/train.py's one-line argument error for ``argv`` (exit status 2)."""
    from tools.train import parse_args
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def one_line(exc) -> str:
    """The one-line message ``explain_error`` gives for ``exc`` (it has one)."""
    message = explain_error(exc)
    assert message is not None and '\n' not in message, repr(exc)
    return message


def error_line(result) -> str:
    """The one ``error:`` line of a tool run (``subprocess.run``'s result) that exited
    with status 2, with no traceback."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(lines) == 1, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    return lines[0]


def failed_start_up(work, monkeypatch, error, in_vis_data=False):
    """tools/train.py on the shrunk demo (``tests.tiny_models.TINY_TRAIN``) into
    ``work``, its config's dump failing with the errno ``error`` (a full disk, a
    file-size limit): the dump into ``work``, the file made empty (the visualizer's copy
    in vis_data/ written), or with ``in_vis_data`` that copy, cut at 1000 characters.

    Returns:
        the ``RunError`` the run stops with.
    """
    from mmengine.config import Config

    from mmsora.utils.cli import RunError
    from tests.tiny_models import DEMO, TINY_TRAIN
    from tools import train
    dump = Config.dump

    def failing(self, file=None):
        if ('vis_data' in file) != in_vis_data:
            return dump(self, file)
        with open(file, 'w') as f:  # made, as far as the disk or the limit let it grow
            f.write(self.pretty_text[:1000] if in_vis_data else '')
        raise OSError(error, os.strerror(error), file)

    monkeypatch.setattr(Config, 'dump', failing)
    with pytest.raises(RunError) as info:
        train.main([osp.join(REPO_ROOT, DEMO), '--work-dir', str(work), '--cfg-options',
                    *TINY_TRAIN])
    return info.value


def report_file_size_limit(monkeypatch, soft):
    """``resource.getrlimit`` reports ``soft`` as this process's file-size limit (bytes;
    ``resource.RLIM_INFINITY``: none set), whatever the real one: the advice for EFBIG
    depends on it, with no file that large written."""
    import resource
    real = resource.getrlimit
    monkeypatch.setattr(resource, 'getrlimit', lambda which: (
        (soft, real(which)[1]) if which == resource.RLIMIT_FSIZE else real(which)))


def run_instances():
    """What a Runner makes under its name (the config's and a timestamp in seconds):
    mmengine's loggers, message hubs, visualizers and scopes. A run started in the same
    second as an earlier one (another test's) got the earlier one's (its visualizer
    wrote into the earlier run's folder)."""
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.registry import DefaultScope
    from mmengine.visualization import Visualizer
    return MMLogger, MessageHub, Visualizer, DefaultScope


def forget_runs():
    """Close and forget the loggers, message hubs, visualizers and scopes made."""
    for kind in run_instances():
        for made in kind._instance_dict.values():
            for handler in getattr(made, 'handlers', ()):
                handler.close()
        kind._instance_dict.clear()
