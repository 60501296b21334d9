"""Checks of the one-line messages the tools give, shared by the tests."""
import pytest

from mmsora.utils.cli import UserError
from mmsora.utils.error_messages import explain_error


def refused(main, argv) -> str:
    """The message of the UserError that a tool's ``main(argv)`` raises."""
    with pytest.raises(UserError) as info:
        main(argv)
    return str(info.value)


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
