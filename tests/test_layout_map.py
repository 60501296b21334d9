"""docs/layout.md names every module of mmsora/ and every tool, and nothing gone."""
import os.path as osp
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _named():
    text = (ROOT / 'docs' / 'layout.md').read_text()
    return set(re.findall(r'^\| `([^`]+)` \|', text, flags=re.M))


def _modules():
    found = set()
    for path in (ROOT / 'mmsora').rglob('*.py'):
        if path.name != '__init__.py':
            found.add(path.relative_to(ROOT / 'mmsora').as_posix())
    return found


def _tools():
    return {p.name for p in (ROOT / 'tools').iterdir() if p.suffix in ('.py', '.sh')}


def test_every_module_and_tool_has_its_line():
    named = _named()
    assert not _modules() - named, 'modules without a line in docs/layout.md'
    assert not _tools() - named, 'tools without a line in docs/layout.md'


def test_no_line_names_a_file_that_is_gone():
    gone = {name for name in _named()
            if not (osp.exists(ROOT / 'mmsora' / name) or osp.exists(ROOT / 'tools' / name))}
    assert not gone, 'docs/layout.md names files that are not there'
