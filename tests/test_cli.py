import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import open_store
from storage.cli import main
from storage.maintenance import scan
from storage.retry import Retrier
from storage.units import parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[1]
DAY = 86400


def run(capsys, *argv: str) -> tuple[int, object]:
    rc = main([*argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


@pytest.fixture
def filled(store_url):
    a = open_store(store_url, fingerprint="fp-a")
    b = open_store(store_url, fingerprint="fp-b")
    a.put("fxgraph", "fkey1", b"x" * 100)
    a.put("fxgraph", "fkey1", b"y" * 50)
    a.put("autotune", "pt2:abc/def", b"z" * 10)
    b.put("fxgraph", "fkey1", b"x" * 100)
    a.put_snapshot("job-1", b"s" * 1000)
    return store_url, a, b


def test_ls_and_stats(filled, capsys):
    url, a, _ = filled
    rc, listing = run(capsys, "ls", url)
    assert rc == 0
    by = {(g["fingerprint"], g["kind"], g["key"]): g for g in listing}
    assert by[("fp-a", "fxgraph", "fkey1")]["variants"] == 2
    assert by[("fp-a", "autotune", "pt2:abc/def")]["variants"] == 1
    assert by[("fp-a", "snapshot", "job-1")]["snapshot"] is True
    assert by[("fp-b", "fxgraph", "fkey1")]["bytes"] == 106
    rc, stats = run(capsys, "stats", url)
    assert stats["fingerprints"]["fp-a"]["objects"] == 4
    assert stats["fingerprints"]["fp-b"]["objects"] == 1
    assert stats["total"]["entries"] == 5 and stats["total"]["bytes"] == 1290
    assert main(["ls", url]) == 0
    human = capsys.readouterr().out
    assert "pt2:abc/def" in human and "FINGERPRINT" in human


def test_verify_and_quarantine(filled, capsys, monkeypatch):
    url, a, _ = filled
    rc, report = run(capsys, "verify", url)
    assert rc == 0 and report["ok"] and report["checked"] == 5
    digest = a.put("fxgraph", "fkey2", b"to be damaged")
    a.fs.pipe_file(a.layout.object_path(digest), b"damaged")
    rc, report = run(capsys, "verify", url)
    assert rc == 1 and [b["digest"] for b in report["bad"]] == [digest]
    rc, report = run(capsys, "verify", url, "--quarantine")
    assert rc == 1 and report["repaired"]
    rc, report = run(capsys, "verify", url)
    assert rc == 0 and report["checked"] == 5
    rc, stats = run(capsys, "stats", url)
    assert stats["fingerprints"]["fp-a"]["quarantined"] == 1
    monkeypatch.setenv("PT2CC_SIGNING_KEY", "k")  # with a key, unsigned objects are bad
    rc, report = run(capsys, "verify", url)
    assert rc == 1 and len(report["bad"]) == 5


def test_prune_never_touches_young_files(filled, capsys):
    url, a, _ = filled
    rc, plan = run(capsys, "prune", url, "--older-than", "0s", "--max-bytes", "0", "--yes")
    assert rc == 0 and plan["entries"] == 0 and plan["objects"] == 0
    assert a.get_variants("fxgraph", "fkey1")


def _age(path: str, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_prune_old_entries_then_objects(tmp_path, capsys):
    url = str(tmp_path / "store")
    s = open_store(url, fingerprint="fp")
    old = s.put("fx", "old", b"o" * 100)
    shared = s.put("fx", "old", b"shared")
    s.put("fx", "new", b"shared")
    fresh_orphan = s.put("fx", "orphan", b"young object")
    lay = s.layout
    for d in (old, shared):
        _age(f"{lay.variants_dir('fx', 'old')}/{d}", 40 * DAY)
        _age(lay.object_path(d), 40 * DAY)
    os.remove(f"{lay.variants_dir('fx', 'orphan')}/{fresh_orphan}")
    rc, plan = run(capsys, "prune", url, "--older-than", "30d")
    assert rc == 0 and not plan["applied"]
    assert (plan["entries"], plan["objects"]) == (2, 1)
    assert os.path.exists(lay.object_path(old))  # dry run
    rc, plan = run(capsys, "prune", url, "--older-than", "30d", "--yes")
    assert plan["applied"] and plan["bytes_freed"] == 106
    assert not os.path.exists(lay.object_path(old))
    assert s.get_variants("fx", "old") == []
    assert s.get_variants("fx", "new") == [b"shared"]  # object still named by "new"
    assert os.path.exists(lay.object_path(fresh_orphan))  # younger than an hour
    rc, report = run(capsys, "verify", url)
    assert rc == 0 and not report["dangling"]


def test_prune_to_max_bytes_oldest_first(tmp_path, capsys):
    url = str(tmp_path / "store")
    s = open_store(url, fingerprint="fp")
    for i in range(4):
        d = s.put("fx", f"k{i}", bytes([i]) * 1000)
        _age(f"{s.layout.variants_dir('fx', f'k{i}')}/{d}", (10 - i) * 3600)
        _age(s.layout.object_path(d), (10 - i) * 3600)
    s.put("fx", "young", b"y" * 1000)  # within the hour a running job may need: kept
    rc, plan = run(capsys, "prune", url, "--max-bytes", "2500", "--yes")
    assert plan["entries"] == 3 and plan["bytes_after"] <= 2500
    kept = {e.key for e in scan(s.fs, s.root, Retrier(s.url), [s.fingerprint]).entries}
    assert kept == {"k3", "young"}


def test_prune_needs_a_limit(tmp_path, capsys):
    assert main(["prune", str(tmp_path)]) == 2


def test_bad_url_is_one_clear_error(capsys):
    assert main(["ls", "nosuchfs://x/y"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pt2cc: error: unknown protocol") and "Traceback" not in err


@pytest.mark.parametrize(("text", "value"), [("50G", 50 * 2**30), ("500MiB", 500 * 2**20),
                                             ("1024", 1024), ("1.5k", 1536)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "value"), [("30d", 30 * DAY), ("12h", 43200), ("90m", 5400),
                                             ("2w", 14 * DAY), ("10", 10)])
def test_parse_duration(text, value):
    assert parse_duration(text) == value


def test_cli_process_does_not_import_torch(tmp_path):
    code = ("import sys; from storage.cli import main; rc = main(['stats', sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "TOTAL" in out.stdout


def test_prune_counts_age_from_last_use(tmp_path, capsys, monkeypatch):
    """A job that loaded an entry keeps it: age counts from the newest record of use."""
    url = str(tmp_path / "store")
    s = open_store(url, fingerprint="fp")
    s.describe_environment({"torch": "2.13.0", "triton": "none", "cuda": "None", "gpu": "none",
                            "cpu": "AVX2"})
    used, unused = s.put("fx", "used", b"u" * 10), s.put("fx", "unused", b"n" * 10)
    for key in ("used", "unused"):
        s.put_components("fx", key, {"gm": ["h-" + key, "code"]})
    lay = s.layout
    for key, d in (("used", used), ("unused", unused)):
        for path in (f"{lay.variants_dir('fx', key)}/{d}", lay.object_path(d),
                     lay.components_path("fx", key)):
            _age(path, 40 * DAY)
    s.record_use("old-job", [unused])
    _age(lay.used_path("old-job"), 35 * DAY)
    s.record_use("recent-job", [used])
    _age(lay.used_path("recent-job"), 2 * DAY)
    monkeypatch.setenv("PT2CC_CACHE", url)  # no URL given: pt2cc reads PT2CC_CACHE
    rc, listing = run(capsys, "ls")
    last = {g["key"]: g["last_used"] for g in listing}
    assert last["used"] == pytest.approx(time.time() - 2 * DAY, abs=60)
    assert last["unused"] == pytest.approx(time.time() - 35 * DAY, abs=60)
    assert listing[0]["environment"]["torch"] == "2.13.0"
    assert main(["ls"]) == 0
    human = capsys.readouterr().out
    assert "LAST USED" in human and "fp: torch 2.13.0, Triton none, CUDA None, CPU AVX2" in human
    rc, plan = run(capsys, "prune", "--older-than", "30d", "--yes")
    assert (plan["entries"], plan["objects"], plan["notes"]) == (1, 1, 2)  # + its components
    assert s.list_variants("fx", "used") == [used] and s.list_variants("fx", "unused") == []
    assert s.get_components("fx", "unused") is None and s.get_components("fx", "used")
    assert not os.path.exists(lay.used_path("old-job"))
    assert os.path.exists(lay.used_path("recent-job"))


def test_pt2cc_without_url_or_variable_is_one_clear_error(capsys, monkeypatch):
    monkeypatch.delenv("PT2CC_CACHE", raising=False)
    assert main(["ls"]) == 2
    assert capsys.readouterr().err.strip() == "pt2cc: error: give a store URL, or set PT2CC_CACHE"


def _rank_stats(rank: int, hits: int, misses: dict[str, int]) -> dict:
    return {"rank": rank, "fxgraph_cache_hit": hits, "fxgraph_cache_miss": sum(misses.values()),
            "fxgraph_cache_bypass": 0, "autograd_cache_hit": 0, "autograd_cache_miss": 0,
            "autograd_cache_bypass": 0, "loaded": hits, "waited_s": 1.5, "misses": misses,
            "store": {"bytes_read": 2048},
            "miss_details": [{"kind": "fxgraph", "key": f"k{rank}", "reason": r,
                              "compile_id": "0/0"} for r in misses]}


def test_report_merges_jobs_and_explain_reads_stats_files(tmp_path, capsys):
    for r in range(2):
        (tmp_path / f"a.rank{r}.json").write_text(json.dumps(_rank_stats(r, 3, {"new graph": 1})))
    job_b = {"world_size": 2, "ranks": [_rank_stats(r, 4, {}) for r in range(2)]}
    (tmp_path / "b.job.json").write_text(json.dumps(job_b))
    files = [str(tmp_path / "a.rank0.json"), str(tmp_path / "a.rank1.json"),
             str(tmp_path / "b.job.json")]
    rc, report = run(capsys, "report", *files)
    assert rc == 0
    a, b = report["jobs"][str(tmp_path / "a")], report["jobs"][str(tmp_path / "b")]
    assert (a["fxgraph_cache_hit"], a["fxgraph_cache_miss"], a["ranks"]) == (6, 2, 2)
    assert (b["fxgraph_cache_hit"], b["fxgraph_cache_miss"]) == (8, 0)
    assert report["total"]["fxgraph_cache_hit"] == 14 and report["total"]["ranks"] == 4
    assert main(["report", *files]) == 0
    table = capsys.readouterr().out
    assert "TOTAL" in table and "new graph (2)" in table and "6/2" in table
    rc, explained = run(capsys, "explain", *files[:2])
    assert explained[str(tmp_path / "a")]["misses"] == {"new graph": 2}


@pytest.mark.parametrize("content", ["{not json", json.dumps({"something": "else"})])
def test_report_names_a_bad_stats_file(tmp_path, capsys, content):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["report", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pt2cc: error: {bad}: ") and "Traceback" not in err


def test_explain_a_stored_key_against_its_nearest_neighbour(tmp_path, capsys):
    s = open_store(str(tmp_path / "store"), fingerprint="fp")
    base = {"gm": ["g1", "code"], "inductor_config[max_autotune]": ["c1", "False"],
            "example_inputs[0]": ["i1", "float32[3, 4]"]}
    s.put("fxgraph", "base", b"b")
    s.put_components("fxgraph", "base", base)
    s.put("fxgraph", "other", b"o")
    s.put_components("fxgraph", "other", {**base, "gm": ["g2", "other code"],
                                          "example_inputs[0]": ["i2", "float64[3, 4]"]})
    s.put("fxgraph", "tuned", b"t")
    s.put_components("fxgraph", "tuned", {**base,
                                          "inductor_config[max_autotune]": ["c2", "True"]})
    rc, found = run(capsys, "explain", str(tmp_path / "store"), "--key", "tuned")
    assert rc == 0 and found[0]["nearest"] == "base"
    assert found[0]["reason"] == ("nearest stored entry differs in: Inductor config "
                                  "max_autotune (False -> True)")
    assert main(["explain", str(tmp_path / "store"), "--key", "nope"]) == 1
