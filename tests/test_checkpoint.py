import os
import random

import numpy as np
import pytest
import torch

from dppo.checkpoint import (
    UnsafeCheckpointError,
    checkpoint_dir,
    checkpoint_path,
    find_resume_checkpoint,
    last_checkpoint_path,
    load_checkpoint,
    load_state_dict_checked,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dppo.paths import atomic_write


def test_save_load_round_trip_creates_parent_dirs(tmp_path):
    path = str(tmp_path / "a" / "b" / "state.pt")
    state = {"itr": 3, "weights": torch.arange(4.0), "rng": rng_state()}
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded["itr"] == 3
    assert torch.equal(loaded["weights"], torch.arange(4.0))
    assert os.listdir(tmp_path / "a" / "b") == ["state.pt"]


class RunsCodeWhenLoaded:
    """A pickle payload that would create `marker` when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_that_would_run_code_is_refused_with_one_line(tmp_path):
    path, marker = str(tmp_path / "evil.pt"), str(tmp_path / "pwned")
    torch.save({"itr": 1, "payload": RunsCodeWhenLoaded(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"Checkpoint {path} was refused: it holds Python objects other than tensors")
    assert not os.path.exists(marker), "nothing in the checkpoint ran"


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_save_overwrites_atomically_and_failed_save_keeps_old_file(tmp_path):
    path = str(tmp_path / "state.pt")
    save_checkpoint(path, {"itr": 1})
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        save_checkpoint(path, {"itr": 2, "unpicklable": Unpicklable()})
    assert load_checkpoint(path)["itr"] == 1
    assert os.listdir(tmp_path) == ["state.pt"]
    save_checkpoint(path, {"itr": 2})
    assert load_checkpoint(path)["itr"] == 2


def test_load_missing_file_names_path(tmp_path):
    path = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(path)


@pytest.mark.parametrize("corrupt", ["truncated", "garbage"])
def test_load_corrupt_file_raises_one_line_value_error(tmp_path, corrupt):
    path = str(tmp_path / "state.pt")
    save_checkpoint(path, {"weights": torch.randn(100)})
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2] if corrupt == "truncated" else b"\x00garbage bytes\xff" * 10)
    with pytest.raises(ValueError, match="is corrupt or unreadable") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"Checkpoint {path} ")
    assert message.endswith("delete it or point to another checkpoint.")


def test_load_state_dict_checked_loads_matching_state():
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    load_state_dict_checked(target, source.state_dict())
    assert torch.equal(target.weight, source.weight)


def test_load_state_dict_checked_names_shape_mismatch():
    with pytest.raises(ValueError) as info:
        load_state_dict_checked(torch.nn.Linear(3, 2), torch.nn.Linear(4, 2).state_dict(), what="actor")
    message = str(info.value)
    assert "\n" not in message
    assert "'weight'" in message and "(2, 4)" in message and "(2, 3)" in message
    assert "match the config's model dims" in message


def test_load_state_dict_checked_names_missing_and_unexpected_keys():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    state = {"0.weight": torch.zeros(2, 3), "1.bias": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"missing keys \['0.bias'\], unexpected keys \['1.bias'\]"):
        load_state_dict_checked(model, state)
    assert torch.any(model[0].weight != 0), "nothing must be loaded when the check fails"


def test_paths_and_find_resume_checkpoint(tmp_path):
    run_dir = str(tmp_path / "run")
    assert checkpoint_dir(run_dir) == os.path.join(run_dir, "checkpoint")
    assert checkpoint_path(run_dir, 7) == os.path.join(run_dir, "checkpoint", "state_7.pt")
    save_checkpoint(last_checkpoint_path(run_dir), {"itr": 7})
    save_checkpoint(checkpoint_path(run_dir, 7), {"itr": 7})

    assert find_resume_checkpoint(run_dir) == last_checkpoint_path(run_dir)
    assert find_resume_checkpoint(checkpoint_path(run_dir, 7)) == checkpoint_path(run_dir, 7)
    assert find_resume_checkpoint("run", run_dir_hint=str(tmp_path)) == last_checkpoint_path(run_dir)
    with pytest.raises(FileNotFoundError, match="checkpoint/last.pt"):
        find_resume_checkpoint(str(tmp_path / "other_run"))
    with pytest.raises(FileNotFoundError, match="Cannot resume"):
        find_resume_checkpoint(str(tmp_path))  # a directory without checkpoint/last.pt


def test_rng_state_round_trip_through_checkpoint_continues_streams(tmp_path):
    path = str(tmp_path / "rng.pt")
    save_checkpoint(path, {"rng": rng_state()})
    expected = (random.random(), np.random.rand(3), torch.rand(3))
    set_rng_state(load_checkpoint(path)["rng"])
    actual = (random.random(), np.random.rand(3), torch.rand(3))
    assert actual[0] == expected[0]
    np.testing.assert_array_equal(actual[1], expected[1])
    assert torch.equal(actual[2], expected[2])


def test_saved_checkpoint_has_the_permissions_of_a_normal_file(tmp_path):
    path = str(tmp_path / "state.pt")
    save_checkpoint(path, {"itr": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_leaves_no_temporary_and_keeps_the_old_file_on_error(tmp_path):
    path = str(tmp_path / "sub" / "metrics.csv")
    with atomic_write(path) as f:
        f.write("old")
    with pytest.raises(ZeroDivisionError):
        with atomic_write(path) as f:
            f.write("partial")
            1 / 0
    assert open(path).read() == "old"
    assert os.listdir(tmp_path / "sub") == ["metrics.csv"]
