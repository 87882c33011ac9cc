"""Protocol 0-2 pickles name globals as Python 2 did (`__builtin__.long` for `int`, `copy_reg` for
`copyreg`); torch.load's unpickler maps them back (`fix_imports`) and so does our inert reader:
plain containers pickled that way are data, while a Python 2 name for code is still refused.
Nothing is ever run: each hostile pickle here is first shown to run its payload under `pickle`.
"""

from __future__ import annotations

import collections
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hostile.corpus import torch_zip
from registry.errors import UnsafeCheckpointError
from registry.readers import read_checkpoint

REGISTRY = str(Path(sys.executable).with_name("registry"))


def training_state() -> dict:
    """What trainers keep beside the weights: counters, ordered and default dicts of plain data."""
    return {
        "model": torch.nn.Linear(2, 3).state_dict(),
        "token_counts": collections.defaultdict(int, {"a": 3, "b": 1}),
        "buckets": collections.defaultdict(list, {"short": [1, 2]}),
        "losses": collections.defaultdict(float, {"train": 0.5}),
        "order": collections.OrderedDict(first=1, second=2),
        "seen": collections.Counter("aab"),
        "samples": 2**70,  # a Python 2 long
    }


@pytest.mark.parametrize(("protocol", "legacy"), [(1, False), (2, False), (2, True), (4, False)],
                         ids=["protocol1-zip", "protocol2-zip", "protocol2-legacy", "protocol4-zip"])
def test_plain_containers_in_an_old_protocol_checkpoint_are_data(tmp_path, protocol, legacy):
    path = tmp_path / "ckpt.pt"
    torch.save(training_state(), path, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    done = subprocess.run([REGISTRY, "fingerprint", str(path), "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # no "unsafe", no "names ... kept as placeholders"
    report = json.loads(done.stdout)[0]
    assert report["entries"] == 2


class _Payload:
    """Unpickling it calls `func(*args)`: pickled at protocol 2, builtins are written as `__builtin__.X`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile(tmp_path: Path, obj, *, marker: Path | None = None) -> Path:
    data = pickle.dumps({"model": {}, "extra": obj}, protocol=2)
    if marker is not None:  # control: a real unpickler runs it
        pickle.loads(data)
        assert marker.exists()
        marker.unlink()
    return torch_zip(tmp_path / "hostile.pt", data)


def test_a_python2_name_for_eval_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran.marker"
    path = _hostile(tmp_path, _Payload(eval, f"open({str(marker)!r}, 'w').close()"), marker=marker)
    assert b"c__builtin__\neval\n" in path.read_bytes()
    with pytest.raises(UnsafeCheckpointError, match=r"calls builtins\.eval"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(("obj", "named"), [
    (_Payload(sys.intern, "x"), "sys.intern"),                 # written as __builtin__.intern
    (collections.defaultdict(eval, {"a": 1}), "builtins.eval"),  # a default factory that is code
    (_Payload(getattr, "x", "upper"), "builtins.getattr"),
])
def test_python2_names_of_code_stay_refused(tmp_path, obj, named):
    path = _hostile(tmp_path, obj)
    with pytest.raises(UnsafeCheckpointError, match=named.replace(".", r"\.")):
        read_checkpoint(path)


def test_the_python2_names_are_mapped_only_below_protocol_3(tmp_path):
    # Python's unpickler maps `__builtin__.long` only for protocols 0-2; at protocol 4 it is not
    # `int` (torch.load would fail to find it), so it is not taken for one either.
    record = (b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x0b__builtin__\x8c\x04long\x93K\x01\x85R.")
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.long"):
        read_checkpoint(torch_zip(tmp_path / "p4.pt", record))
