"""Every command-line error is one line on stderr and a non-zero exit; a traceback only with
--debug."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn
from minicnn.cli import commands as cli
from minicnn.layers import Dense, Flatten


def _one_line_error(capsys, argv, status=1) -> str:
    assert cli.main(argv) == status
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def bad_files(tmp_path):
    model = minicnn.Sequential([Flatten(), Dense(4, 2)], input_shape=(1, 2, 2))
    good = minicnn.save(model, tmp_path / "good.npz")
    files = {"text": tmp_path / "notes.npz", "empty": tmp_path / "empty.npz",
             "truncated": tmp_path / "cut.npz", "nan": tmp_path / "nan.npz"}
    files["text"].write_text("just some text\n")
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(good.read_bytes()[:200])
    with np.load(good) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["param/dense_1.weight"] = np.full((4, 2), np.nan, np.float32)
    np.savez(files["nan"], **arrays)
    return files


@pytest.mark.parametrize("case,needle", [("text", "a text file"), ("empty", "an empty file"),
                                         ("truncated", "not a minicnn checkpoint"),
                                         ("nan", "NaN or inf")])
def test_bad_checkpoints_give_one_line(capsys, bad_files, case, needle):
    err = _one_line_error(capsys, ["evaluate", str(bad_files[case])])
    assert err.startswith("minicnn evaluate: error: ") and needle in err
    assert "pickle" not in err or case == "pickle"


def test_an_internal_error_is_one_line_unless_debug(capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("something unforeseen")
    monkeypatch.setattr(cli, "cmd_summary", broken)
    err = _one_line_error(capsys, ["summary", "--model", "lenet5"])
    assert err == ("minicnn summary: internal error: RuntimeError: something unforeseen "
                   "(run again with --debug for the traceback)")
    with pytest.raises(RuntimeError, match="something unforeseen"):
        cli.main(["summary", "--model", "lenet5", "--debug"])
