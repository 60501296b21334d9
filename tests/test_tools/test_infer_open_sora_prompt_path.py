"""Open-Sora's --prompt-path given to tools/infer.py is pointed at --prompt-file (the
near match argparse offered was --prompt, which samples the file's name as a prompt)."""
import pytest

from tests.cli_helpers import load_tool


def test_prompt_path_names_prompt_file(capsys):
    infer = load_tool('infer')
    with pytest.raises(SystemExit):
        infer.parse_args(['work_dirs/run', '--prompt-path', 'prompts.txt', '--out',
                          'clips/'])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert '(did you mean --prompt-file for --prompt-path?)' in line, line
