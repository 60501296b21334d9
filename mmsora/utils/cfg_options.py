"""``--cfg-options KEY=VALUE``: values parsed as Python literals (lists, tuples, dicts,
negative list indices), keys the config does not read refused (another project's
name suggested: foreign_flags.py), and notes on the schedule and the variables a
change leaves behind."""
import math
import re

from mmsora.utils.cli import UserError, note
from mmsora.utils.config_loading import (import_custom_modules, listed_paths, schedule_left_behind,
                                         spent_entries)
from mmsora.utils.foreign_flags import FOREIGN_KEYS, foreign_key_hint

__all__ = ['OPTIONAL_TOP_LEVEL', 'known_top_level', 'apply_cfg_options', 'edit_distance']


def _parse_value(text):
    """A --cfg-options value as mmengine's ``DictAction`` reads it (numbers, True /
    False, None, ``a,b`` and ``[a,b]`` lists, ``(a,b)`` tuples, nested), except that
    before, it deleted every space (``/a/feat copy`` became ``/a/featcopy``) and
    split any string at its commas, quoted or not (``"/a/feat,copy"`` became a list).
    Now a value in matching quotes (``'k="/a b,c"'`` in a shell) is that exact
    string unless it reads as a number, True / False / None or a bracketed list or
    tuple (kept as mmengine reads them: its help writes ``key="[a,b]"``), an entry
    keeps its inner spaces (only those around it go), and a comma inside quotes (one
    that opens an entry: not an apostrophe inside one) does not split. ``dict(...)``
    is refused (ValueError)."""
    from mmengine.config import DictAction
    text = text.strip()
    if _quoted(text):  # an exact string, unless it reads as a number, True / False /
        inner = text[1:-1]  # None or a bracketed list or tuple, as mmengine took
        bracketed = inner[:1] + inner[-1:] in ('[]', '()')  # those ('"[a,b]"', '"1e-4"')
        value = DictAction._parse_int_float_bool(inner) if not bracketed else None
        if bracketed:
            return _parse_value(inner)
        if isinstance(value, float) and not math.isfinite(value):
            return inner  # a quoted 'nan' / 'inf' is that string
        return value if not isinstance(value, str) else inner
    bare = text.strip('\'"')  # mmengine drops stray quotes at the ends
    is_tuple = bare.startswith('(') and bare.endswith(')')
    if is_tuple or (bare.startswith('[') and bare.endswith(']')):
        entries = _split_entries(bare[1:-1])
    elif ',' in text:
        entries = _split_entries(text)
        if len(entries) == 1:  # no comma outside brackets: dict(a=1,b=2), f(x,y)
            raise ValueError(f'not a value: {text}')
    elif re.fullmatch(r'dict\(.*\)', bare):
        raise ValueError(f'not a value: {text}')
    else:
        return DictAction._parse_int_float_bool(bare)
    values = [_parse_value(entry) for entry in entries]
    return tuple(values) if is_tuple else values


def _quoted(text: str) -> bool:
    """Whether ``text`` is one string in matching quotes: ``"a b"``, not ``"a","b"``."""
    return (len(text) >= 2 and text[0] == text[-1] and text[0] in '\'"'
            and text[0] not in text[1:-1])


def _split_entries(text: str) -> list:
    """``text`` split at its commas outside brackets and quotes (a trailing empty entry
    dropped, as mmengine does: ``1,2,`` is ``[1, 2]``); ValueError for unbalanced
    brackets."""
    entries, depth, start, quote = [], 0, 0, None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in '\'"' and not text[start:i].strip() and char in text[i + 1:]:
            quote = char  # (at an entry's start only: an apostrophe inside, O'Brien)
        elif char in '([':
            depth += 1
        elif char in ')]':
            depth -= 1
            if depth < 0:
                raise ValueError(f'unbalanced brackets in {text}')
        elif char == ',' and depth == 0:
            entries.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f'unbalanced brackets in {text}')
    if start < len(text):
        entries.append(text[start:])
    return entries


# Top-level keys the tools or mmengine's Runner read when a config sets them (most
# configs do not): a --cfg-options key two edits from one of them is a typo too.
OPTIONAL_TOP_LEVEL = (
    'global_batch_size', 'sample_cfg', 'strategy', 'model_wrapper_cfg',
    'find_unused_parameters', 'evaluation', 'val_dataloader', 'val_cfg', 'val_evaluator',
    'test_dataloader', 'test_cfg', 'test_evaluator', 'auto_scale_lr', 'experiment_name',
    'param_scheduler', 'custom_hooks', 'log_processor', 'visualizer')


def known_top_level() -> set:
    """The top-level keys that mean something to the tools or to mmengine's Runner /
    FlexibleRunner (their arguments): what a key one typo off is compared with."""
    import inspect

    from mmengine.runner import FlexibleRunner, Runner
    known = {'_base_', 'custom_imports', 'runner_type', *OPTIONAL_TOP_LEVEL}
    for runner in (Runner, FlexibleRunner):
        known.update(inspect.signature(runner.__init__).parameters)
    return known - {'self', 'cfg'}


def apply_cfg_options(cfg, options, schedule_note: bool = True):
    """Apply ``KEY=VALUE`` overrides (mmengine's --cfg-options syntax); an index
    into a list may count from the end (``param_scheduler.-1.end``; before, that was a
    malformed entry).

    ``options`` may also be a dict of keys and Python values (``init_model``'s
    ``cfg_options={'a.b': 1}``): taken as they are, with the same checks; or one
    string, which is one entry (``cfg_options='a.b=1'``; before, it was read character
    by character: "malformed --cfg-options entry 'a'").

    Raises:
        UserError: naming the malformed option or the key that cannot be set.
    """
    updates, given, written = {}, {}, {}
    if isinstance(options, str):
        options = [options]
    elif not isinstance(options, dict):
        options = list(options)
    python = isinstance(options, dict)  # (they went through text: a dict value failed,
    for option in (options.items() if python else options):  # '2024' became 2024)
        if python:
            key, parsed = option
            shown, well_formed = f'{key}={parsed!r}', isinstance(key, str)
        else:
            key, sep, value = option.partition('=')
            shown, well_formed = option, bool(sep)
        if not well_formed or not key or not all(re.fullmatch(r'\w*|-\d+', part)
                                                 for part in key.split('.')):
            raise UserError(f'malformed --cfg-options entry {shown!r}: expected KEY=VALUE, '
                            'e.g. train_cfg.max_iters=1000')
        if not python:
            try:
                parsed = _parse_value(value)
            except (AssertionError, RecursionError, ValueError) as e:
                raise UserError(f'cannot parse the value of --cfg-options {key}: {value!r} '
                                '(use numbers, strings, [lists] or (tuples); quote a string '
                                'with commas or spaces: \'KEY="a, b"\')') from e
        if _non_finite(parsed):  # the dumped config said max_norm=inf: NameError on load
            raise UserError(f'--cfg-options {shown}: a config cannot hold inf or nan '
                            '(the work dir\'s dumped config would not load again for infer '
                            'or --resume): give a large number such as 1e9' +
                            ('' if python else f', or quote a string: \'{key}="{value}"\''))
        resolved = _resolve_negative_indices(cfg, key)
        updates[resolved], given[resolved], written[resolved] = parsed, key, shown
    if schedule_note:
        _note_schedule_left_behind(cfg, updates)
    for key, value in updates.items():
        shown = given[key]
        parent_path, _, leaf = key.rpartition('.')
        parts = parent_path.split('.') if parent_path else []
        if not parts:
            _refuse_spent_variable(cfg, key, value)
        # mmengine adds any new key. Checked for typos: each dict on the path (a new one
        # there, a hook config without a type say, fails far away) and a top-level leaf
        # (set and never read); a new leaf inside a dict is an option its class checks.
        walk = parts or [leaf]
        node = cfg
        for depth, part in enumerate(walk):
            if isinstance(node, (list, tuple)):
                _check_list_step(shown, walk[:depth], node, part,
                                 key.split('.')[depth + 1:], value)
            if isinstance(node, (list, tuple)) and part.isdigit():  # mmengine: an index
                if int(part) >= len(node):
                    raise UserError(f'--cfg-options {shown}: {".".join(parts[:depth])} has '
                                    f'{len(node)} entries, no [{part}]')
                child = node[int(part)]
            else:
                child = node.get(part) if hasattr(node, 'get') else None
            if child is None:
                # A key set to None (e.g. model.text_encoder) is filled in as before.
                names = list(node.keys()) if hasattr(node, 'keys') else []
                if depth == 0:  # also what the tools and the Runner read when set
                    names += sorted(known_top_level() - set(names))
                meant = min(names, key=lambda name: edit_distance(part, name), default=part)
                if part not in names and len(part) > 4 and edit_distance(part, meant) <= 2:
                    above = '.'.join(walk[:depth] + [''])
                    raise UserError(f'--cfg-options {shown}: the config has no '
                                    f'{above}{part}; did you mean {above}{meant}?')
                new_top = not parts and part not in names
                inside = _paths_ending_in(cfg, part) if new_top else []
                if new_top and part in FOREIGN_KEYS:  # (diffusers' guidance_scale=4)
                    inside += [f'sample_cfg.{FOREIGN_KEYS[part]}']
                if inside:  # set at the top and never read: the run ignored it
                    raise UserError(f'--cfg-options {shown}: the config has no top-level '
                                    f'{part} (it would be set and never read); did you mean '
                                    f'{" or ".join(inside[:3])}?')
                if new_top:
                    _refuse_new_top_level_key(written[key], part)
                break
            node = child
        else:
            if parts and isinstance(node, (list, tuple)):
                _check_list_step(shown, parts, node, leaf, [], value)
        if parts and parts[-1] == 'sample_cfg' and leaf in FOREIGN_KEYS:
            # (a sampler's option, for all the sampling check knew: 'did you mean
            # guidance_channels?')
            raise UserError(f'--cfg-options {written[key]}: the sampling settings have no '
                            f'{leaf} (another project\'s name); did you mean '
                            f'{parent_path}.{FOREIGN_KEYS[leaf]}?')
        if parent_path and not hasattr(node, 'get') and not (
                isinstance(node, (list, tuple)) and leaf.isdigit()
                and int(leaf) < len(node)):
            raise UserError(f'--cfg-options {shown}: {parent_path} is not a dict in the config')
        try:
            cfg.merge_from_dict({key: value})
        except Exception as e:
            raise UserError(f'--cfg-options {shown}={value!r}: {e}') from e
    if any(key.split('.')[0] == 'custom_imports' for key in updates):
        # imported with the config file's: one given here was dumped with the run but
        # never imported (a typo or a module that fails passed without a word)
        import_custom_modules(cfg.get('custom_imports'))
    return cfg


def _refuse_new_top_level_key(written: str, key: str) -> None:
    """A top-level ``key`` that the config does not have, and that neither the tools
    nor the Runner read: set, dumped with the run and never read (Stable Cascade's
    ``updates=10`` trained the config's length). Refused where it is another project's
    setting (the foreign tables say what to give); any other is noted, as a key that
    only code of one's own (a hook of ``custom_imports``) can read."""
    hint = foreign_key_hint(key, written.partition('=')[2])
    if hint:
        raise UserError(f'--cfg-options {written}: the config has no top-level key {key!r} '
                        f'(it would be set and never read); {hint}')
    note(f'--cfg-options {written}: the config has no top-level key {key!r}; it is added, '
         'and only code of your own that reads it sees it', once=True)


def _paths_ending_in(cfg, name: str, depth: int = 3) -> list:
    """The dotted paths of ``cfg``'s entries named ``name`` inside its sections, up to
    ``depth`` levels down (``max_iters`` -> ``['train_cfg.max_iters']``)."""
    return [path for path, _ in _entries_named(cfg, name, depth)]


def _entries_named(cfg, name: str, depth: int = 3) -> list:
    """``[(path, value)]`` of the entries :func:`_paths_ending_in` names."""
    found = []

    def walk(node, path, left):
        if not hasattr(node, 'items') or not left:
            return
        for key, value in node.items():
            if key == name and path:
                found.append((f'{path}.{key}', value))
            walk(value, f'{path}.{key}' if path else key, left - 1)
    walk(cfg, '', depth)
    return found


def _non_finite(value) -> bool:
    """Whether a parsed --cfg-options value holds inf or nan (in a list or tuple too)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, (list, tuple)) and any(_non_finite(v) for v in value)


def _resolve_negative_indices(cfg, key: str) -> str:
    """``key`` with each index counted from the end (``param_scheduler.-1.end``) made
    the index from the start that mmengine's merge takes (``param_scheduler.1.end``
    for two schedulers). Before, a negative index was 'malformed'."""
    parts = key.split('.')
    node = cfg
    for i, part in enumerate(parts):
        if part.startswith('-'):
            above = '.'.join(parts[:i])
            if not isinstance(node, (list, tuple)):
                raise UserError(f'--cfg-options {key}: {part} is an index, but '
                                f'{above or "the config"} is not a list')
            if -int(part) > len(node):
                raise UserError(f'--cfg-options {key}: {above} has {len(node)} entries, '
                                f'no [{part}]')
            parts[i] = str(len(node) + int(part))
        if isinstance(node, (list, tuple)):
            index = int(parts[i]) if parts[i].isdigit() else len(node)
            node = node[index] if index < len(node) else None
        else:
            node = node.get(parts[i]) if hasattr(node, 'get') else None
    return '.'.join(parts)


def _check_list_step(shown, path_parts, sequence, part, rest, value) -> None:
    """Refuse a key that goes into a list or tuple where mmengine cannot follow it.
    Before: into one of plain values (``model.latent_shape.0=4``), mmengine's long
    'cannot inherit from base ... set `_delete_=True`'; a name where an index belongs
    (``param_scheduler.first.end``), 'no param_scheduler.first; did you mean
    param_scheduler.first?'; a whole entry of a list of dicts (``custom_hooks.0=5``),
    "'int' object has no attribute 'items'"."""
    path = '.'.join(path_parts)
    kind = 'a tuple' if isinstance(sequence, tuple) else 'a list'
    if not all(isinstance(entry, dict) for entry in sequence):
        whole = list(sequence)
        if part.isdigit() and int(part) < len(whole) and not rest:
            whole[int(part)] = value
        plain = tuple(sequence) if isinstance(sequence, tuple) else list(sequence)
        raise UserError(f'--cfg-options {shown}: {path} is {kind} {plain!r}: '
                        f'give it whole, e.g. {path}={_literal(whole)}')
    if not part.isdigit():
        example = '.'.join([path, '0', *(rest or ['KEY'])])
        raise UserError(f'--cfg-options {shown}: {path} is {kind}: give an index, '
                        f'e.g. {example}')
    if not rest and int(part) < len(sequence):
        raise UserError(f'--cfg-options {shown}: {path}.{part} is a dict: set its keys '
                        f'(e.g. {path}.{part}.KEY=VALUE) or give {path} whole')


def _literal(value) -> str:
    """``value`` written as a --cfg-options value (no spaces): ``[4,8,8]``."""
    if isinstance(value, (list, tuple)):
        inner = ','.join(_literal(entry) for entry in value)
        return f'({inner})' if isinstance(value, tuple) else f'[{inner}]'
    if isinstance(value, str) and not re.fullmatch(r'[\w./:+-]*', value):
        return f'"{value}"'
    return str(value)


def _note_schedule_left_behind(cfg, updates) -> None:
    """A shorter or longer ``train_cfg.max_iters`` leaves the learning-rate schedule
    where it was (its ``end`` took the old length when the config was read): said on
    stderr, naming the entries to set as well, unless they are set too."""
    new = updates.get('train_cfg.max_iters')
    old = (cfg.get('train_cfg') or {}).get('max_iters')
    left = schedule_left_behind(cfg, old, new, set_paths=updates)
    if left:
        note(f'--cfg-options train_cfg.max_iters={new}: the schedule still ends at {old}, '
             f'the config\'s length; for one that ends with the run set {" ".join(left)} '
             'too')


def _refuse_spent_variable(cfg, key, value) -> None:
    """A top-level path variable (``data_root``) is spent when the config is read:
    entries built from it (``train_dataloader.dataset.data_root``) keep the old path,
    and setting it afterwards changes nothing. Refused, naming those entries.

    So is one that no entry took at all: a derived config (README's fast-DiT one)
    sets ``train_dataloader.dataset.data_root`` itself and leaves the base's
    ``data_root`` behind, and ``data_root=/x`` trained on the old path while the
    dumped config said ``/x``. Refused where entries of the sections bear its name
    and the tools or the Runner do not read it at the top (``work_dir``)."""
    old = cfg.get(key)
    found = spent_entries(cfg, key, old) if value != old else []
    if not found and key in cfg and value != old and key not in known_top_level():
        entries = _entries_named(cfg, key, depth=5)
        named = [path for path, _ in entries]
        if any(held != value for _, held in entries):
            raise UserError(f'--cfg-options {key}={value}: no entry of the config took its '
                            f'value from the variable {key} ({listed_paths(named)} '
                            f'{"holds" if len(named) == 1 else "hold"} a value of '
                            f'{"its" if len(named) == 1 else "their"} own), so setting it '
                            f'changes nothing: set {named[0]}={value} instead')
    if found:
        # the example: the loop's length where it took the variable (not, say, a
        # checkpoint interval that happened to equal it)
        path, same = next((f for f in found if f[0] == 'train_cfg.max_iters'), found[0])
        example = f'{path}={value if same else "..."}'
        raise UserError(f'--cfg-options {key}={value}: {key} is a variable the config '
                        f'used when it was read ({listed_paths([p for p, _ in found])} took its '
                        f'value); setting it now changes nothing: set those instead, e.g. '
                        f'{example}')


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest one-character insertions, deletions or
    substitutions that turn ``a`` into ``b``."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]
