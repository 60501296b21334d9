"""mmsora.datasets.store_folder.foreign_folder_message: the one message of an --out
folder of other files and no latent store, which tools/extract_features.py and
tools/convert_fastdit_features.py both give (each built it itself)."""
from mmsora.datasets.store_folder import foreign_folder_message


def test_the_message_names_three_entries_and_none_for_a_folder_a_store_may_take(tmp_path):
    assert foreign_folder_message(str(tmp_path / 'missing')) is None
    out = tmp_path / 'out'
    out.mkdir()
    (out / '.gitkeep').write_text('')
    assert foreign_folder_message(str(out)) is None  # (hidden files passed over)
    (out / 'b.jpg').write_bytes(b'mine')
    (out / 'a.jpg').write_bytes(b'mine')
    assert foreign_folder_message(str(out)) == (
        f'--out {out} holds other files (a.jpg, b.jpg) and no latent store: pick an empty '
        'or new folder for the store')
    for name in ('d.jpg', 'c.jpg'):
        (out / name).write_bytes(b'mine')
    assert foreign_folder_message(str(out)).startswith(
        f'--out {out} holds other files (a.jpg, b.jpg, c.jpg, ...) and no latent store')
    (out / 'index.json').write_text('{}')  # a store's file: its folder is taken
    assert foreign_folder_message(str(out)) is None
