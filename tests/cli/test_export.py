"""deit-export's --output: what is there already is replaced only if it is an earlier export."""

import os

from deit_keras.deploy import saving
from deit_keras.testing import assert_one_line_error, run_cli, tiny_model


def test_export_keeps_a_folder_that_is_not_an_earlier_savedmodel(tmp_path):
    mine = tmp_path / "runs" / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "notes.txt").write_text("notes")
    saving.save_model(tiny_model(), str(mine / "model.keras"))
    before = sorted(os.listdir(mine))
    process = run_cli("export", f"--model_path={mine / 'model.keras'}", f"--output={mine}")
    assert_one_line_error(process, "without saved_model.pb", str(mine))
    assert sorted(os.listdir(mine)) == before

    # An earlier SavedModel is replaced, but not when it holds the model being exported.
    (mine / "saved_model.pb").write_bytes(b"an earlier export")
    process = run_cli("export", f"--model_path={mine / 'model.keras'}", f"--output={mine}")
    assert_one_line_error(process, "--output would replace --model_path", str(mine))
    assert sorted(os.listdir(mine)) == sorted([*before, "saved_model.pb"])
