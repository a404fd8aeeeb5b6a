"""Odd checkpoint files end in one CheckpointError (exit 2), never a traceback (probe D13, D18)."""

from __future__ import annotations

import pytest
import torch

from nnrun import checkpoint
from nnrun.errors import CheckpointError


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A real checkpoint of a tiny run: (path, payload)."""
    from nnrun import recipe as recipe_io
    from nnrun.workflows import train as train_wf

    root = tmp_path_factory.mktemp("ck")
    r = recipe_io.load("quickstart", ["train.epochs=1", "data.limit=200", "log.tensorboard=false",
                                      "log.progress=none", "model.hidden=[8]"])
    result = train_wf.run(r, run_dir=root / "run", handle_signals=False)
    path = result.last_checkpoint
    return path, torch.load(path, weights_only=True)


def edited(tmp_path, payload, **changes):
    """The payload with keys changed (None values remove the key), saved as a .pt file."""
    data = dict(payload)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp_path / "edited.pt"
    torch.save(data, path)
    return path


@pytest.mark.parametrize("changes, message", [
    ({"format_version": "2"}, "no valid format_version"),
    ({"format_version": None}, "no valid format_version"),
    ({"format_version": 0}, "no valid format_version"),
    ({"format_version": 99}, f"format version 99; this nnrun reads up to {checkpoint.FORMAT_VERSION}"),
    ({"recipe": None}, "`recipe` is missing"),
    ({"normalization": None}, "`normalization` is missing"),
    ({"data": {}}, "`data.task` is missing"),
    ({"model": {"w": 3}}, "other than tensors"),
])
def test_a_hand_edited_payload_is_named_not_a_traceback(good, tmp_path, changes, message):
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(edited(tmp_path, good[1], **changes))


def test_resume_needs_history_and_position_but_predict_does_not(good, tmp_path):
    path = edited(tmp_path, good[1], history="none", optimizer=None)
    assert checkpoint.load(path)["step"] == good[1]["step"]
    with pytest.raises(CheckpointError, match="`history` is str"):
        checkpoint.load(path, resume=True)


@pytest.mark.parametrize("content", [b"hello world\n", b"\x89PNG\r\n\x1a\n" + bytes(64), b"a,b\n1,2\n"])
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, content):
    path = tmp_path / "thing.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a checkpoint \\(not a PyTorch zip archive\\)"):
        checkpoint.load(path)


def test_cli_commands_report_damaged_files_with_exit_2(good, tmp_path, cli):
    bad = edited(tmp_path, good[1], recipe=None)
    for args in (["predict", bad], ["train", "--resume", bad], ["ensemble", bad, bad]):
        res = cli(*args)
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output and "`recipe` is missing" in res.stderr


def test_weights_that_do_not_fit_the_stored_recipe_are_a_checkpoint_error(good, tmp_path, cli):
    model = {k: torch.zeros(3) if k.endswith("bias") else v for k, v in good[1]["model"].items()}
    res = cli("predict", edited(tmp_path, good[1], model=model))
    assert res.exit_code == 2 and "do not fit the model of its stored recipe" in res.stderr


def test_resume_without_last_pt_points_at_the_newest_checkpoint(good, cli):
    folder = good[0].parent
    (folder / "last.pt").rename(folder / "moved.pt")
    try:
        res = cli("train", "--resume", folder.parent)
        newest = checkpoint.newest_checkpoint(folder.parent)
        assert res.exit_code == 2 and newest is not None and f"--resume {newest}" in res.stderr
    finally:
        (folder / "moved.pt").rename(folder / "last.pt")
