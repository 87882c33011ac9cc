"""Corrupt, truncated, hostile-structured and not-a-checkpoint inputs: one line, exit code 3,
bounded time and memory (issue 3). Every file is built here in tmp_path; each CLI run is a fresh
process under a 1 GiB address-space limit and a timeout."""

from __future__ import annotations

import json
import os
import pickle
import random
import resource
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from hostile.corpus import (deep_lists, laughs, patch_uncompressed_size, safetensors_bytes, tensor_pickle, text,
                            torch_zip)
from registry.errors import CheckpointError
from registry.readers import Limits, read_checkpoint

MEMORY_LIMIT = 1 << 30
MiB = 1 << 20


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    def bound_memory():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run([sys.executable, "-m", "registry.command.cli", "fingerprint", *args],
                          capture_output=True, text=True, timeout=timeout, preexec_fn=bound_memory)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Real torch.save outputs (zip and legacy) of a two-tensor state dict."""
    import torch

    directory = tmp_path_factory.mktemp("saved")
    state = {"fc.weight": torch.ones(3, 4), "fc.bias": torch.ones(3)}
    torch.save(state, directory / "zip.pt")
    torch.save(state, directory / "legacy.pt", _use_new_zipfile_serialization=False)
    return {"zip": directory / "zip.pt", "legacy": directory / "legacy.pt"}


def valid_zip(d: Path, name: str = "valid.pt") -> Path:
    return torch_zip(d / name, tensor_pickle(), {"0": bytes(24)})


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _header(entries: dict) -> bytes:
    return json.dumps(entries).encode()


F32_4 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}


def _crc(d: Path) -> Path:
    path = valid_zip(d)
    raw = bytearray(path.read_bytes())
    at = raw.index(text("w"))
    raw[at + 5] = ord("v")  # still a valid pickle, but not the bytes the CRC was computed over
    return _write(path, bytes(raw))


def _local_mismatch(d: Path) -> Path:
    path = valid_zip(d)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"archive/data.pkl")  # the first occurrence is the local header
    raw[at:at + 16] = b"archive/data.pkx"
    return _write(path, bytes(raw))


def _duplicate_members(d: Path) -> Path:
    path = valid_zip(d)
    with pytest.warns(UserWarning), zipfile.ZipFile(path, "a") as archive:
        archive.writestr("archive/data.pkl", tensor_pickle(name="other"))
    return path


def _zip_bomb(d: Path) -> Path:
    path = d / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data.pkl", "w") as member:
            chunk = bytes(MiB)
            for _ in range(100):
                member.write(chunk)
        archive.writestr("archive/version", "3\n")
    patch_uncompressed_size(path, "archive/data.pkl", 1000)
    return path


def _oversized(d: Path) -> Path:
    size = 65 * MiB
    return torch_zip(d / "big.pt", b"\x80\x04\x8e" + struct.pack("<Q", size) + bytes(size) + b".")


def _tar(d: Path) -> Path:
    path = d / "old.pt"
    source = d / "pickle"
    source.write_bytes(pickle.dumps({"a": 1}))
    with tarfile.open(path, "w") as archive:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            archive.add(source, arcname=name)
    return path


def _legacy_truncated(d: Path, saved) -> Path:
    return _write(d / "legacy-cut.pt", saved["legacy"].read_bytes()[:-10])


def _fifo(d: Path) -> Path:
    path = d / "pipe.pt"
    os.mkfifo(path)
    return path


def _dangling(d: Path) -> Path:
    path = d / "link.pt"
    path.symlink_to(d / "gone.pt")
    return path


def _index(d: Path, shard: str) -> Path:
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    return d / "model.safetensors.index.json"


def _torch(d: Path, name: str, make) -> Path:
    import torch

    path = d / name
    torch.save(make(torch), path)
    return path


CASES = {
    "empty": (lambda d, s: _write(d / "empty.pt", b""), "the file is empty"),
    "truncated-half": (lambda d, s: _write(d / "half.pt", s["zip"].read_bytes()[:1000]),
                       "not a complete zip archive"),
    "truncated-tail": (lambda d, s: _write(d / "tail.pt", s["zip"].read_bytes()[:-30]), "not a complete zip archive"),
    "random-bytes": (lambda d, s: _write(d / "random.pt", random.Random(3).randbytes(4096)), "not a checkpoint"),
    "wrong-magic-png": (lambda d, s: _write(d / "image.pt", b"\x89PNG\r\n\x1a\n" + bytes(200)), "a PNG image"),
    "html-page": (lambda d, s: _write(d / "page.bin", b"<!DOCTYPE html><html><body>Sign in</body></html>" * 3),
                  "an HTML/XML page (a failed download?)"),
    "safetensors-100GB-header": (lambda d, s: _write(d / "huge.safetensors", safetensors_bytes(
        _header({"w": F32_4}), bytes(16), length=100 * 10**9)), "claims 100,000,000,000 bytes"),
    "safetensors-offsets-outside": (lambda d, s: _write(d / "out.safetensors", safetensors_bytes(
        _header({"w": F32_4}), bytes(8))), "runs past the end of the file"),
    "safetensors-overlap": (lambda d, s: _write(d / "overlap.safetensors", safetensors_bytes(_header(
        {"a": F32_4, "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}), bytes(24))), "overlaps"),
    "safetensors-bad-json": (lambda d, s: _write(d / "json.safetensors", safetensors_bytes(b'{"w": [', bytes(4))),
                             "not valid JSON"),
    "safetensors-duplicate": (lambda d, s: _write(d / "dup.safetensors", safetensors_bytes(
        b'{"w": ' + _header(F32_4) + b', "w": ' + _header(F32_4) + b"}", bytes(16))), "names 'w' twice"),
    "safetensors-bad-dtype": (lambda d, s: _write(d / "dtype.safetensors", safetensors_bytes(
        _header({"w": dict(F32_4, dtype="F99")}), bytes(16))), "unknown dtype 'F99'"),
    "deep-marks": (lambda d, s: torch_zip(d / "marks.pt", b"\x80\x02" + b"(" * 5000 + b"."),
                   "nests deeper than 1000 levels"),
    "deep-lists-via-memo": (lambda d, s: torch_zip(d / "deep.pt", deep_lists(400_000)), "it holds a list of 1 items"),
    "memo-amplification": (lambda d, s: torch_zip(d / "laughs.pt", laughs(40)), "it holds a list of 10 items"),
    "huge-memo-index": (lambda d, s: torch_zip(d / "memo.pt", b"\x80\x02}r\xff\xff\xff\xff."),
                        "no mapping of names to tensors found"),
    "oversized-pickle": (lambda d, s: _oversized(d), "over the 67,108,864-byte limit"),
    "zip-bomb": (lambda d, s: _zip_bomb(d), "inflates past the 67,108,864-byte limit"),
    "directory-named-pt": (lambda d, s: (d / "dir.pt").mkdir() or d / "dir.pt", "no model weights found"),
    "dangling-link": (lambda d, s: _dangling(d), "dangling symbolic link"),
    "named-pipe": (lambda d, s: _fifo(d), "not a regular file"),
    "git-lfs-pointer": (lambda d, s: _write(d / "lfs.pt", b"version https://git-lfs.github.com/spec/v1\n"
                                            b"oid sha256:4d7a2146e1b2\nsize 3438309899\n"),
                        "Git LFS pointer file (sha256:4d7a2146e1b2..., 3,438,309,899 bytes)"),
    "old-tar-format": (lambda d, s: _tar(d), "old tar-format torch checkpoint"),
    "polyglot-prefix": (lambda d, s: _write(d / "poly.pt", b"JUNK" * 100 + s["zip"].read_bytes()),
                        "does not start at byte 0"),
    "duplicate-members": (lambda d, s: _duplicate_members(d), "two members named 'archive/data.pkl'"),
    "local-central-mismatch": (lambda d, s: _local_mismatch(d), "disagrees with the central directory"),
    "crc-mismatch": (lambda d, s: _crc(d), "fails its CRC check"),
    "missing-storage": (lambda d, s: torch_zip(d / "nostore.pt", tensor_pickle()), "missing from the archive"),
    "short-storage": (lambda d, s: torch_zip(d / "short.pt", tensor_pickle(), {"0": bytes(8)}),
                      "storage '0' holds 8 bytes; data.pkl says it has 24"),
    "view-past-storage": (lambda d, s: torch_zip(d / "view.pt", tensor_pickle(shape=(4, 4)), {"0": bytes(24)}),
                          "needs 64 bytes of storage '0', which holds 24"),
    "two-archive-roots": (lambda d, s: torch_zip(d / "roots.pt", tensor_pickle(), {"0": bytes(24)},
                                                 {"other/version": b"3\n"}), "not all under one top-level folder"),
    "plain-pickle": (lambda d, s: _write(d / "plain.pt", pickle.dumps({"a": 1}, protocol=2)), "no torch magic number"),
    "legacy-truncated": (lambda d, s: _legacy_truncated(d, s), "truncated: storage"),
    "json-not-index": (lambda d, s: _write(d / "config.json", b"{}"), "it is a JSON file"),
    "index-shard-outside": (lambda d, s: _index(d, "../x.safetensors"), "outside its folder"),
    "index-shard-missing": (lambda d, s: _index(d, "model-1.safetensors"), "listed in the index is missing"),
    "pickled-module": (lambda d, s: _torch(d, "module.pt", lambda torch: torch.nn.Linear(2, 2)),
                       "a pickled torch.nn.modules.linear.Linear module (torch.save(model))"),
    "optimizer-only": (lambda d, s: _torch(d, "optim.pt", lambda torch: torch.optim.SGD(
        torch.nn.Linear(2, 2).parameters(), lr=0.1).state_dict()), "it holds an optimizer state_dict"),
    "single-tensor": (lambda d, s: _torch(d, "tensor.pt", lambda torch: torch.zeros(3)),
                      "it holds a single float32 tensor of shape [3]"),
    "mixed-top-level": (lambda d, s: _torch(d, "mixed.pt", lambda torch: {"w": torch.zeros(2), "step": 3}),
                        "its top level mixes 1 tensors with other values (step)"),
    "ambiguous-containers": (lambda d, s: _torch(d, "two.pt", lambda torch: {
        "a": {"x.w": torch.zeros(1)}, "b": {"y.w": torch.zeros(1)}}), "several mappings of names to tensors"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_exit_3(tmp_path, saved, name):
    build, phrase = CASES[name]
    path = build(tmp_path, saved)
    result = run_cli(str(path))
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: cannot read {path}: "), lines[0]
    assert phrase in lines[0]


def test_memo_amplification_in_metadata_is_summarised_in_bounded_time(tmp_path):
    # {"model": {"w": tensor}, "cfg": 10**40 logical leaves shared through the memo}
    amplified = laughs(40)[2:-1]
    data = b"\x80\x02}(" + text("model") + tensor_pickle()[2:-1] + text("cfg") + amplified + b"u."
    path = torch_zip(tmp_path / "meta.pt", data, {"0": bytes(24)})
    result = run_cli(str(path), "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)[0]
    assert report["entries"] == 1 and report["container"] == "model"
    assert report["metadata"]["cfg"] == "<list of 10 items>"


@pytest.mark.parametrize("limits, build, message", [
    (Limits(max_instructions=1000), lambda d: torch_zip(d / "a.pt", deep_lists(2000)),
     "runs past 1,000 instructions"),
    (Limits(max_memo=10), lambda d: torch_zip(d / "b.pt", deep_lists(50)), "memo grows past 10 entries"),
    (Limits(max_tensors=1), lambda d: torch_zip(d / "c.pt", b"\x80\x02(" + tensor_pickle()[2:-1] * 2 + b"l.",
                                                {"0": bytes(24)}),
     "more than 1 tensors"),
    (Limits(max_long_bytes=8), lambda d: torch_zip(d / "d.pt", b"\x80\x02\x8b" + struct.pack("<i", 16) + bytes(16) + b"."),
     "a pickled integer claims 16 bytes"),
    (Limits(max_pickle_bytes=100), lambda d: valid_zip(d), "over the 100-byte limit for a pickle record"),
    (Limits(max_header_bytes=10), lambda d: _write(d / "e.safetensors", safetensors_bytes(_header({"w": F32_4}),
                                                                                       bytes(16))),
     "over the 10-byte cap"),
    (Limits(), lambda d: torch_zip(d / "f.pt", b"\x80\x02X" + struct.pack("<I", 10**9) + b"abc."),
     "claims 1,000,000,000 bytes; only 4 are left"),
    (Limits(), lambda d: torch_zip(d / "g.pt", b"\x80\x02}N" + b"\x85" * 100 + b"K\x01s."),
     "a dict key or set item is nested too deeply"),
    (Limits(), lambda d: torch_zip(d / "h.pt", b"\x80\x02\x82\x01."), "copyreg extension registry"),
])
def test_limits_end_in_a_clear_error(tmp_path, limits, build, message):
    path = build(tmp_path)
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path, limits=limits)
    assert caught.value.message.startswith(f"cannot read {path}: ")
    assert message in caught.value.message
