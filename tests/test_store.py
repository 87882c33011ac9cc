"""The Registry API on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from registry.errors import DatabaseError, UsageError
from registry.schema import ModuleSignature, Schema, TensorEntry
from registry.store import api, open_registry

SIGNATURE = ModuleSignature((("", "torch.nn.Sequential"), ("0", "torch.nn.Linear")))


def make_schema(names, width=4, dtype="float32") -> Schema:
    return Schema(TensorEntry(name, (width, width) if name.endswith("weight") else (width,), dtype) for name in names)


def blocks(n: int, norm: str = "norm.weight") -> list[str]:
    names = []
    for i in range(n):
        names += [f"blocks.{i}.attn.to_q.weight", f"blocks.{i}.attn.to_k.weight", f"blocks.{i}.ff.0.weight",
                  f"blocks.{i}.ff.0.bias", f"blocks.{i}.{norm}"]
    return names


def record(reg, variant, schema, signature=SIGNATURE, revision="rev1"):
    return reg.record_schema_version(variant, schema, signature, code_revision=revision,
                                     package_versions={"torch": "2.13.0"})


def test_register_variant_is_insert_or_get_with_one_event(reg):
    first = reg.register_variant("toy/a", "toy", {"dim": 4, "depth": 2}, "a toy")
    again = reg.register_variant("toy/a", "toy", {"depth": 2, "dim": 4}, "other text is ignored")
    assert first == again
    assert first.config == {"depth": 2, "dim": 4} and first.config_json == '{"depth":2,"dim":4}'
    assert first.family == "toy" and first.latest_version is None
    assert [e.action for e in reg.events()] == ["variant.add"]
    assert reg.get_variant("toy/missing") is None
    assert [v.name for v in reg.list_variants("toy")] == ["toy/a"] and reg.list_variants("other") == []


def test_same_variant_name_with_another_config_names_both_values(reg):
    reg.register_variant("toy/a", "toy", {"dim": 4, "depth": 2})
    with pytest.raises(UsageError) as caught:
        reg.register_variant("toy/a", "toy", {"dim": 8, "depth": 2})
    assert caught.value.message == "variant 'toy/a' is already registered with a different config (dim: registered 4, given 8)"
    with pytest.raises(UsageError) as caught:
        reg.register_variant("toy/a", "other", {"dim": 4, "depth": 2})
    assert caught.value.message == (
        "variant 'toy/a' is already registered with a different config (family: registered toy, given other)"
    )
    assert reg.counts()["variants"] == 1 and reg.counts()["events"] == 1


def test_schema_versions_count_up_and_are_idempotent(reg):
    reg.register_variant("toy/a", "toy", {})
    v1 = record(reg, "toy/a", make_schema(blocks(2)))
    assert (v1.version, v1.entry_count, v1.code_revision, v1.package_versions) == (1, 10, "rev1", {"torch": "2.13.0"})
    assert record(reg, "toy/a", make_schema(blocks(2)), revision="rev2") == v1  # same layout: nothing written
    swapped = ModuleSignature((("", "torch.nn.Sequential"), ("0", "mine.SwiGLU")))
    v2 = record(reg, "toy/a", make_schema(blocks(2)), signature=swapped)  # class swap, same tensors
    v3 = record(reg, "toy/a", make_schema(blocks(3)))
    assert [v.version for v in reg.schema_versions("toy/a")] == [1, 2, 3]
    assert v2.fingerprint == v1.fingerprint and v2.signature_hash != v1.signature_hash
    assert reg.latest_schema_version("toy/a") == v3
    assert reg.get_variant("toy/a").latest_version == 3
    assert reg.counts()["schemas"] == 2  # v1 and v2 share one stored schema
    assert [e.details["version"] for e in reg.events(variant="toy/a") if e.action == "schema.record"] == [1, 2, 3]
    with pytest.raises(UsageError, match="unknown variant 'toy/none'"):
        record(reg, "toy/none", make_schema(blocks(1)))


def test_find_by_fingerprint_lists_every_schema_equivalent_variant(reg):
    for name in ("toy/geglu", "toy/swiglu", "toy/other"):
        reg.register_variant(name, "toy", {"name": name})
    shared = make_schema(blocks(2))
    record(reg, "toy/swiglu", shared)
    record(reg, "toy/geglu", shared)
    record(reg, "toy/other", make_schema(blocks(1)))
    found = reg.find_by_fingerprint(shared.fingerprint)
    assert [(v.variant, v.version) for v in found] == [("toy/geglu", 1), ("toy/swiglu", 1)]
    assert reg.find_by_fingerprint("sha256:" + "0" * 64) == []

    # Many at once (an SD single file asks for ~1,000 prefixes): the same answers, unknowns absent.
    other = make_schema(blocks(1)).fingerprint
    unknown = ["sha256:%064x" % i for i in range(1200)]  # more than one batch of the IN list
    many = reg.find_by_fingerprints([shared.fingerprint, other, *unknown, shared.fingerprint])
    assert many == {shared.fingerprint: found, other: reg.find_by_fingerprint(other)}


def test_load_schema_and_signature_round_trip_with_dtypes(reg):
    reg.register_variant("toy/a", "toy", {})
    schema = Schema([TensorEntry("w", (3, 4), "bfloat16"), TensorEntry("s", (), "int64"), TensorEntry("b", (0,))])
    version = record(reg, "toy/a", schema)
    assert reg.load_schema(version.id) == schema
    assert reg.load_schema(version.id).entries[1].dtype == "int64"
    assert reg.load_signature(version.id) == SIGNATURE
    with pytest.raises(UsageError, match="no schema version with id 999"):
        reg.load_schema(999)


def test_nearest_candidates_rank_by_similarity(reg):
    for name in ("toy/base", "toy/renamed-norm", "toy/wider", "toy/unrelated"):
        reg.register_variant(name, "toy", {"name": name})
    base = make_schema(blocks(12))
    record(reg, "toy/base", base)
    record(reg, "toy/renamed-norm", make_schema(blocks(12, norm="norm.gamma")))
    record(reg, "toy/wider", make_schema(blocks(12) + blocks(14)[60:]))
    record(reg, "toy/unrelated", make_schema([f"encoder.layer{i}.conv.weight" for i in range(40)]))
    query = make_schema(blocks(12, norm="norm.gamma")[:-5] + blocks(12)[-5:])  # nearly renamed-norm
    ranked = reg.nearest_candidates(query, limit=3)
    assert [v.variant for v, _ in ranked] == ["toy/renamed-norm", "toy/base", "toy/wider"]
    scores = [score for _, score in ranked]
    assert scores == sorted(scores, reverse=True) and 0.8 < scores[0] < 1.0
    assert reg.nearest_candidates(base, limit=1)[0][1] == 1.0
    assert reg.nearest_candidates(make_schema(["x.weight"]), limit=3) == []


def test_checkpoints_are_insert_or_get_per_path_and_stat(reg):
    reg.register_variant("toy/a", "toy", {})
    version = record(reg, "toy/a", make_schema(blocks(1)))
    fields = dict(format="torch-zip", container="state_dict", wrapper="module.", prefix=None,
                  fingerprint=version.fingerprint)
    first = reg.register_checkpoint("/ckpt/a.pt", size=100, mtime=1700000000.25, step=10, **fields)
    assert first.variant is None and first.content_digest is None
    again = reg.register_checkpoint("/ckpt/a.pt", size=100, mtime=1700000000.25, content_digest="sha256:aa",
                                    schema_version_id=version.id, **fields)
    assert again.id == first.id and again.content_digest == "sha256:aa" and again.variant == "toy/a"
    assert again.step == 10
    rewritten = reg.register_checkpoint("/ckpt/a.pt", size=100, mtime=1700000001.0, **fields)
    assert rewritten.id != first.id
    assert reg.find_checkpoint("/ckpt/a.pt", 100, 1700000000.25).id == first.id
    assert reg.find_checkpoint("/ckpt/a.pt", 101, 1700000000.25) is None
    assert reg.find_checkpoint_by_digest("sha256:aa").id == first.id
    assert [e.action for e in reg.events() if e.action.startswith("checkpoint")] == [
        "checkpoint.add", "checkpoint.update", "checkpoint.add"]
    with pytest.raises(UsageError, match="recorded with content digest sha256:aa, not sha256:bb"):
        reg.register_checkpoint("/ckpt/a.pt", size=100, mtime=1700000000.25, content_digest="sha256:bb", **fields)
    assert [c.id for c in reg.list_checkpoints(variant="toy/a")] == [first.id]


def test_runs_start_end_and_list(reg):
    reg.register_variant("toy/a", "toy", {})
    reg.register_variant("other/b", "other", {})
    version = record(reg, "toy/a", make_schema(blocks(1)))
    run = reg.start_run("toy/a", schema_version_id=version.id, config={"lr": 0.1}, host="node1", user="ana",
                        scheduler_job_id="12345", world_size=8, code_revision="abc")
    assert len(run.id) == 16 and run.status == "running" and run.ended_at is None
    assert run.started_at.tzinfo is not None and run.started_at.utcoffset() == timedelta(0)
    checkpoint = reg.register_checkpoint("/c/1.pt", size=1, mtime=1.0, format="torch-zip", container=None,
                                         wrapper=None, prefix=None, fingerprint=version.fingerprint, run_id=run.id)
    resumed = reg.start_run("toy/a", schema_version_id=version.id, config={}, host="node2", user="ana",
                            resumed_from_checkpoint_id=checkpoint.id, parent_run_id=run.id)
    reg.start_run("other/b", schema_version_id=None, config={}, host="node3", user="bo")
    ended = reg.end_run(run.id, "preempted")
    assert ended.status == "preempted" and ended.ended_at >= ended.started_at
    assert reg.end_run(run.id, "preempted") == ended
    with pytest.raises(UsageError, match=f"run {run.id} already ended with status preempted"):
        reg.end_run(run.id, "completed")
    with pytest.raises(UsageError, match="unknown run status 'done'"):
        reg.end_run(run.id, "done")
    assert reg.get_run(resumed.id).resumed_from_checkpoint_id == checkpoint.id
    assert [r.id for r in reg.list_runs(variant="toy/a")] == [run.id, resumed.id]
    assert [r.user for r in reg.list_runs(family="other")] == ["bo"]
    assert len(reg.list_runs(since=datetime.now(timezone.utc) + timedelta(hours=1))) == 0
    assert [c.id for c in reg.list_checkpoints(run_id=run.id)] == [checkpoint.id]
    assert reg.get_run("0" * 16) is None


def test_every_change_logs_who_where_when(reg):
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    reg.register_variant("toy/a", "toy", {"x": 1})
    record(reg, "toy/a", make_schema(blocks(1)))
    events = reg.events(since=before)
    assert [(e.action, e.variant) for e in events] == [("variant.add", "toy/a"), ("schema.record", "toy/a")]
    assert all(e.who == reg.user and e.host == reg.host and e.at.tzinfo is not None for e in events)
    assert events[1].details["version"] == 1 and events[0].details["config"] == {"x": 1}
    assert reg.events(since=datetime.now(timezone.utc) + timedelta(hours=1)) == []


def test_a_failed_write_leaves_no_rows_and_no_event(reg, monkeypatch):
    reg.register_variant("toy/a", "toy", {})
    before = reg.counts()

    def broken(session, signature):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(api, "_signature_id", broken)  # fails after the schema row was flushed
    with pytest.raises(RuntimeError, match="disk on fire"):
        record(reg, "toy/a", make_schema(blocks(2)))
    assert reg.counts() == before
    assert reg.schema_versions("toy/a") == []


def test_readonly_never_writes(db_url, tmp_path):
    with open_registry(db_url, upgrade=True) as writable:
        writable.register_variant("toy/a", "toy", {})
    with open_registry(db_url, readonly=True) as reader:
        assert reader.get_variant("toy/a") is not None
        with pytest.raises(DatabaseError, match="was opened read-only"):
            reader.register_variant("toy/b", "toy", {})
    missing = tmp_path / "nothing-here.db"
    with pytest.raises(DatabaseError) as caught:
        open_registry(f"sqlite:///{missing}", readonly=True)
    assert caught.value.message == f"no registry database at {missing}"
    assert not missing.exists()


def test_url_display_hides_the_password(pg_server):
    url = pg_server.create_database("with_password")
    with open_registry(url.replace("postgres@", "postgres:s3cret@"), upgrade=True) as reg:
        assert "s3cret" not in reg.url_display and "postgres:***@" in reg.url_display
        assert "s3cret" not in repr(reg) and "s3cret" not in str(reg.info())


def test_default_url_is_a_file_in_the_user_data_dir(tmp_path, monkeypatch):
    from registry.store import resolve_db_url

    assert resolve_db_url() == f"sqlite:///{tmp_path / 'xdg-data' / 'model-registry' / 'registry.db'}"
    monkeypatch.setenv("REGISTRY_DB", "postgresql://me@db/reg")
    assert resolve_db_url() == "postgresql+psycopg://me@db/reg"
    assert resolve_db_url("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.chdir(tmp_path)
    assert resolve_db_url("rel/x.db") == f"sqlite:///{tmp_path / 'rel' / 'x.db'}"
