"""`registry runs`, `checkpoints` and `audit` on a real SQLite registry (issue 6, "Audit").

One registry per module holds the story: a ctvit/baseline run before the cut-off date, resumed
twice after it (once through `parent_run_id`, once only through the checkpoint it resumed from),
a second ctvit/baseline chain, a ctvit/tiny run, and a file written by `registry convert`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
import torch
from click.testing import CliRunner

from registry.catalog import get_builtin_variant
from registry.command.cli import main
from registry.families import get_family, make_config
from registry.store import open_registry
from registry.store.variants import init_builtin_variants

RUN_FIELDS = {"id", "variant", "family", "schema_version_id", "config", "host", "user", "scheduler_job_id",
              "world_size", "code_revision", "started_at", "ended_at", "status", "resumed_from_checkpoint_id",
              "parent_run_id"}
CHECKPOINT_FIELDS = {"id", "path", "size", "mtime", "content_digest", "format", "container", "wrapper", "prefix",
                     "fingerprint", "step", "schema_version_id", "variant", "run_id", "created_at"}


@dataclass(frozen=True)
class Story:
    db: str
    cut: str  # ISO datetime between the first run and the others
    first: str  # ctvit/baseline, before the cut: steps 10-20
    second: str  # resumed from first (parent_run_id and checkpoint): steps 30-40
    third: str  # resumed from second's last checkpoint only: step 50
    other_chain: str  # ctvit/baseline, after the cut, on its own
    tiny: str  # ctvit/tiny, after the cut
    source: str  # the file `registry convert` read
    converted: str  # the file it wrote


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> Story:
    tmp = tmp_path_factory.mktemp("audit")
    db = f"sqlite:///{tmp / 'registry.db'}"

    def checkpoint(reg, run_id: str, step: int):
        return reg.register_checkpoint(str(tmp / f"{run_id}-{step}.pt"), size=1000 + step, mtime=1.0e9 + step,
                                       format="torch-zip", container="model", wrapper=None, prefix="",
                                       fingerprint="sha256:" + "a" * 64, step=step, run_id=run_id)

    def start(reg, variant: str, **links):
        version = reg.latest_schema_version(variant)
        return reg.start_run(variant, schema_version_id=version.id, config={}, host="node1", user="me",
                             scheduler_job_id="4242", **links).id

    with open_registry(db, upgrade=True) as reg:
        init_builtin_variants(reg, [get_builtin_variant("ctvit/baseline"), get_builtin_variant("ctvit/tiny")])
        first = start(reg, "ctvit/baseline")
        checkpoint(reg, first, 10)
        resume_point = checkpoint(reg, first, 20)
        reg.end_run(first, "completed")
        cut = datetime.now(timezone.utc).isoformat()
        second = start(reg, "ctvit/baseline", parent_run_id=first, resumed_from_checkpoint_id=resume_point.id)
        checkpoint(reg, second, 30)
        requeue_point = checkpoint(reg, second, 40)
        reg.end_run(second, "preempted")
        third = start(reg, "ctvit/baseline", resumed_from_checkpoint_id=requeue_point.id)
        checkpoint(reg, third, 50)
        other_chain = start(reg, "ctvit/baseline")
        tiny = start(reg, "ctvit/tiny")

    variant = get_builtin_variant("ctvit/tiny")
    family = get_family(variant.family)
    state = family.build(make_config(family, variant.config)).state_dict()
    source = tmp / "refactored.pt"
    torch.save({k.replace(".to_q.", ".query."): v for k, v in state.items()}, source)
    converted = tmp / "fixed.pt"
    done = run("--db", db, "convert", str(source), "--to", "ctvit/tiny", "--rename", ".query.=.to_q.", "-o", str(converted))
    assert done.exit_code == 0, done.output
    return Story(db, cut, first, second, third, other_chain, tiny, str(source), str(converted))


def audit_json(story: Story, *args: str) -> dict:
    result = run("--db", story.db, "audit", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_audit_answers_which_runs_used_a_variant_since_a_date(story):
    answer = audit_json(story, "--variant", "ctvit/baseline", "--since", story.cut)
    listed = [[r["id"] for r in chain["runs"]] for chain in answer["chains"]]
    # the first run started before the date and the ctvit/tiny run is another variant: both left out
    assert listed == [[story.second, story.third], [story.other_chain]]
    assert [chain["root"] for chain in answer["chains"]] == [story.first, story.other_chain]
    assert answer["runs"] == 3 and answer["variant"] == "ctvit/baseline"
    second, third = answer["chains"][0]["runs"]
    assert (second["first_step"], second["last_step"], second["status"], second["schema_version"]) == (
        30, 40, "preempted", 1)
    assert (second["resumed_from_run_id"], second["resumed_from_step"]) == (story.first, 20)
    # the third run names only the checkpoint it resumed from; its run is the parent
    assert (third["resumed_from_run_id"], third["resumed_from_step"], third["parent_run_id"]) == (story.second, 40, None)
    assert RUN_FIELDS <= set(second)


def test_audit_shows_the_whole_resume_chain_in_resume_order(story):
    answer = audit_json(story, "--variant", "ctvit/baseline")
    chain = answer["chains"][0]
    assert [(r["id"], r["depth"]) for r in chain["runs"]] == [(story.first, 0), (story.second, 1), (story.third, 2)]
    assert [(r["first_step"], r["last_step"]) for r in chain["runs"]] == [(10, 20), (30, 40), (50, 50)]
    assert audit_json(story, "--since", "2999-01-01")["chains"] == []
    everything = audit_json(story, "--since", "2000-01-01")
    assert everything["runs"] == 5 and everything["since"] == "2000-01-01T00:00:00+00:00"


def test_audit_text_groups_runs_into_chains(story):
    result = run("--db", story.db, "audit", "--variant", "ctvit/baseline")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "4 runs of ctvit/baseline in 2 resume chains"
    assert lines[2] == f"chain {story.first} (3 runs)"
    assert lines[3].split() == ["run", "variant", "version", "status", "steps", "started", "host", "resumed", "from"]
    assert lines[4].split()[:5] == [story.first, "ctvit/baseline", "1", "completed", "10-20"]
    assert lines[5].startswith(f"  {story.second}") and lines[5].endswith(f"{story.first} @ step 20")
    assert lines[6].startswith(f"    {story.third}") and lines[6].endswith(f"{story.second} @ step 40")


def test_converted_checkpoints_appear_in_audit_and_in_checkpoints_list(story):
    (conversion,) = audit_json(story, "--family", "ctvit")["conversions"]
    assert (conversion["source"], conversion["target"], conversion["variant"], conversion["method"]) == (
        story.source, story.converted, "ctvit/tiny", "rename")
    assert conversion["in_memory"] is False
    assert audit_json(story, "--variant", "ctvit/baseline")["conversions"] == []

    result = run("--db", story.db, "checkpoints", "list", "--variant", "ctvit/tiny", "--json")
    (record,) = json.loads(result.stdout)
    assert set(record) == CHECKPOINT_FIELDS | {"converted_from"}
    assert (record["path"], record["variant"], record["converted_from"]["source"]) == (
        story.converted, "ctvit/tiny", story.source)

    text = run("--db", story.db, "audit", "--variant", "ctvit/tiny").stdout.splitlines()
    assert text[-2].split() == ["at", "source", "to", "variant", "method"]
    assert text[-1].split()[2:] == [story.source, story.converted, "ctvit/tiny", "rename"]


def test_runs_list_filters_and_json_fields(story):
    result = run("--db", story.db, "runs", "list", "--variant", "ctvit/baseline", "--json")
    runs = json.loads(result.stdout)
    assert [r["id"] for r in runs] == [story.first, story.second, story.third, story.other_chain]
    assert all(RUN_FIELDS <= set(r) for r in runs)
    assert [(r["resumed_from_run_id"], r["first_step"], r["last_step"]) for r in runs] == [
        (None, 10, 20), (story.first, 30, 40), (story.second, 50, 50), (None, None, None)]
    assert [r["id"] for r in json.loads(run("--db", story.db, "runs", "list", "--since", story.cut, "--json").stdout)] == [
        story.second, story.third, story.other_chain, story.tiny]

    table = run("--db", story.db, "runs", "list", "--family", "ctvit").stdout.splitlines()
    assert table[0].split() == ["run", "variant", "status", "started", "ended", "host", "job", "resumed", "from"]
    assert table[2].split()[:3] == [story.second, "ctvit/baseline", "preempted"]
    assert table[2].endswith(f"{story.first} @ step 20") and table[3].endswith(f"{story.second} @ step 40")


def test_runs_show_gives_checkpoints_parents_and_children(story):
    result = run("--db", story.db, "runs", "show", story.second, "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert set(shown) == {"run", "checkpoints", "parents", "children"}
    assert shown["run"]["id"] == story.second and RUN_FIELDS <= set(shown["run"])
    assert [c["step"] for c in shown["checkpoints"]] == [30, 40]
    assert set(shown["checkpoints"][0]) == CHECKPOINT_FIELDS
    assert [p["id"] for p in shown["parents"]] == [story.first]
    assert [c["id"] for c in shown["children"]] == [story.third]

    third = json.loads(run("--db", story.db, "runs", "show", story.third[:8], "--json").stdout)
    assert [p["id"] for p in third["parents"]] == [story.second, story.first]  # nearest first, back to the first run

    text = run("--db", story.db, "runs", "show", story.second).stdout.splitlines()
    assert text[0] == f"run          {story.second}"
    assert "resumed from (nearest first)" in text and "resumed by" in text


def test_checkpoints_list_for_one_run(story):
    result = run("--db", story.db, "checkpoints", "list", "--run", story.first)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["path", "step", "variant", "fingerprint", "run", "converted", "from"]
    assert [line.split()[1] for line in lines[1:]] == ["10", "20"]
    assert all(line.split()[2:6] == ["ctvit/baseline", "aaaaaaaaaaaa", story.first, "-"] for line in lines[1:])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["audit", "--since", "yesterday"],
         "error: --since 'yesterday' is not a date: use an ISO date or date and time in UTC, e.g. 2026-11-01 or "
         "2026-11-01T12:00\n"),
        (["runs", "list", "--since", "2026-13-01"],
         "error: --since '2026-13-01' is not a date: use an ISO date or date and time in UTC, e.g. 2026-11-01 or "
         "2026-11-01T12:00\n"),
        (["audit", "--variant", "ctvit/nope"],
         "error: unknown variant 'ctvit/nope'\nhint: `registry variants list` shows the registered variants\n"),
        (["audit", "--family", "vit"],
         "error: no registered variant of family 'vit'\nhint: `registry variants list` shows the registered variants\n"),
        (["runs", "show", "0123456789abcdef"],
         "error: unknown run '0123456789abcdef'\nhint: `registry runs list` shows the runs\n"),
        (["checkpoints", "list", "--run", "nope"], "error: unknown run 'nope'\nhint: `registry runs list` shows the runs\n"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(story, args, message):
    result = run("--db", story.db, *args)
    assert (result.exit_code, result.stderr, result.stdout) == (2, message, "")


def test_an_empty_registry_says_so_on_stderr(tmp_path):
    db = f"sqlite:///{tmp_path / 'empty.db'}"
    open_registry(db).close()
    for args, what in ((["runs", "list"], "runs"), (["checkpoints", "list"], "checkpoints")):
        result = run("--db", db, *args)
        assert (result.exit_code, result.stdout, result.stderr) == (0, "", f"no {what} recorded\n")
    assert run("--db", db, "audit").stdout == "0 runs in 0 resume chains\n"
