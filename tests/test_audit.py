"""`registry.audit`, the library under `registry runs|checkpoints|audit`: dates, resume chains, run ids.

Runs are recorded on a real SQLite registry with variants registered by name only (no model is
built), so these tests import no torch.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from registry.audit import audit, find_run, parse_since, run_detail
from registry.errors import UsageError
from registry.store import open_registry

UTC = timezone.utc


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T12:00", datetime(2026, 11, 1, 12, tzinfo=UTC)),
        ("2026-11-01 12:00:30", datetime(2026, 11, 1, 12, 0, 30, tzinfo=UTC)),
        ("2026-11-01T12:00:30.250000", datetime(2026, 11, 1, 12, 0, 30, 250000, tzinfo=UTC)),
        ("2026-11-01T12:00Z", datetime(2026, 11, 1, 12, tzinfo=UTC)),
        ("2026-11-01T12:00+02:00", datetime(2026, 11, 1, 10, tzinfo=UTC)),
        (" 2026-11-01 ", datetime(2026, 11, 1, tzinfo=UTC)),
    ],
)
def test_dates_are_iso_and_utc_unless_they_say_otherwise(text, moment):
    parsed = parse_since(text)
    assert parsed == moment and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "2026/11/01", "2026-11-01T25:00", "1700000000", ""])
def test_anything_else_is_a_usage_error_naming_the_option(text):
    with pytest.raises(UsageError) as caught:
        parse_since(text, "--after")
    assert caught.value.exit_code == 2
    assert caught.value.message == (f"--after {text!r} is not a date: use an ISO date or date and time in UTC, "
                                    "e.g. 2026-11-01 or 2026-11-01T12:00")


@pytest.fixture
def reg(tmp_path):
    registry = open_registry(f"sqlite:///{tmp_path / 'registry.db'}", upgrade=True)
    registry.register_variant("ctvit/baseline", "ctvit", {})
    registry.register_variant("ldm-unet/tiny", "ldm-unet", {})
    registry.register_variant("diffusers-unet/tiny", "diffusers-unet", {})
    yield registry
    registry.close()


def start(reg, variant: str, **links) -> str:
    return reg.start_run(variant, schema_version_id=None, config={}, host="h", user="u", **links).id


def checkpoint(reg, run_id: str, step: int):
    return reg.register_checkpoint(f"/ckpt/{run_id}/{step}.pt", size=step, mtime=float(step), format="torch-zip",
                                   container=None, wrapper=None, prefix="", fingerprint="sha256:" + "b" * 64,
                                   step=step, run_id=run_id)


def test_a_requeued_job_branches_and_the_chain_lists_each_branch_depth_first(reg):
    first = start(reg, "ctvit/baseline")
    point = checkpoint(reg, first, 100)
    retry_a = start(reg, "ctvit/baseline", parent_run_id=first, resumed_from_checkpoint_id=point.id)
    retry_a_point = checkpoint(reg, retry_a, 150)
    retry_b = start(reg, "ctvit/baseline", parent_run_id=first, resumed_from_checkpoint_id=point.id)
    after_a = start(reg, "ctvit/baseline", resumed_from_checkpoint_id=retry_a_point.id)

    (chain,) = audit(reg).chains
    assert chain.root == first
    assert [(s.run.id, s.depth) for s in chain.runs] == [(first, 0), (retry_a, 1), (after_a, 2), (retry_b, 1)]
    detail = run_detail(reg, first)
    assert [c.run.id for c in detail.children] == [retry_a, retry_b]
    assert [p.run.id for p in run_detail(reg, after_a).parents] == [retry_a, first]


def test_a_resume_across_a_conversion_joins_the_chain_of_another_variant(reg):
    ldm = start(reg, "ldm-unet/tiny")
    point = checkpoint(reg, ldm, 20)
    unet = start(reg, "diffusers-unet/tiny", resumed_from_checkpoint_id=point.id)

    (chain,) = audit(reg).chains
    assert [s.run.id for s in chain.runs] == [ldm, unet]
    (only,) = audit(reg, family="diffusers-unet").chains
    assert (only.root, [s.run.id for s in only.runs]) == (ldm, [unet])
    assert (only.runs[0].resumed_from_run_id, only.runs[0].resumed_from_step, only.runs[0].depth) == (ldm, 20, 1)


def test_a_run_id_prefix_of_four_or_more_characters_finds_its_run(reg):
    runs = [start(reg, "ctvit/baseline") for _ in range(3)]
    assert find_run(reg, runs[1][:8]).id == runs[1]
    with pytest.raises(UsageError, match=f"^unknown run '{runs[1][:3]}'$"):  # too short to name a run
        find_run(reg, runs[1][:3])
