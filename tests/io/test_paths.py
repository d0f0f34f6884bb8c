"""`io.paths.is_within`: what decides that an output would land in an input."""

import os

from deit_keras.io import paths


def test_is_within_resolves_links_dots_and_does_not_match_a_name_prefix(tmp_path):
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    os.symlink(data, tmp_path / "link")
    assert paths.is_within(str(data / "cat" / "out.json"), str(data))
    assert paths.is_within(str(data), str(data))
    # Through a symbolic link to the folder, and with ".." in the way.
    assert paths.is_within(str(tmp_path / "link" / "cat" / "out.json"), str(data))
    assert paths.is_within(str(data / "cat" / ".." / "out.json"), str(data))
    assert not paths.is_within(str(data / ".." / "out.json"), str(data))
    # A sibling whose name starts with the folder's is not inside it.
    assert not paths.is_within(str(tmp_path / "data2" / "out.json"), str(data))
