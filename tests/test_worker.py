"""The sample worker (`python -m worker`) against a real Azurite, run as a real subprocess.

Storage access uses a container SAS with read/create/write only (no list, no delete), the same
shape the launcher issues, which proves the worker needs nothing more than the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import ContainerClient, ContainerSasPermissions, generate_container_sas

from localdev.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from worker.jsonscan import JsonSyntaxError, JsonValidator

REPO_ROOT = Path(__file__).resolve().parent.parent
BATCH_ID = "20261123-193300-k3j9xq"
REQUIRED_VARS = (
    "ML_BATCH_ID",
    "ML_ATTEMPT",
    "ML_CONTAINER",
    "ML_BATCH_PREFIX",
    "ML_MANIFEST",
    "ML_OUTPUT_PREFIX",
    "ML_STORAGE_ACCOUNT_URL",
)


def make_sas(container_name: str, key: str = ACCOUNT_KEY) -> str:
    now = datetime.now(UTC)
    return generate_container_sas(
        ACCOUNT,
        container_name,
        account_key=key,
        permission=ContainerSasPermissions(read=True, create=True, write=True),
        start=now - timedelta(minutes=5),
        expiry=now + timedelta(hours=1),
    )


@dataclass
class Batch:
    """A claimed batch laid out like the launcher does: inputs + manifest under processing/."""

    container: ContainerClient
    batch_id: str = BATCH_ID

    @property
    def prefix(self) -> str:
        return f"processing/{self.batch_id}/"

    @property
    def output(self) -> str:
        return f"output/{self.batch_id}/"

    @property
    def manifest(self) -> str:
        return self.prefix + "_batch.json"

    def put(self, blob: str, data: bytes) -> None:
        self.container.upload_blob(self.prefix + blob, data, overwrite=True)

    def write_manifest(self, files: list[dict[str, Any]], **extra: Any) -> None:
        doc = {
            "version": 1,
            "batch_id": self.batch_id,
            "state": "launched",
            "attempt": 1,
            "files": files,
            "rev": "abc",
            **extra,
        }
        self.container.upload_blob(self.manifest, json.dumps(doc).encode(), overwrite=True)

    def add(self, name: str, data: bytes | None, blob: str | None = None) -> dict[str, Any]:
        """Upload an input (None: leave it missing) and return its manifest entry."""
        blob = blob or name
        if data is not None:
            self.put(blob, data)
        return {
            "source": f"incoming/{name}",
            "name": name,
            "blob": blob,
            "etag": '"0x1"',
            "size": len(data or b""),
        }

    def read(self, name: str) -> dict[str, Any]:
        return json.loads(self.container.download_blob(name).readall())

    def result(self, blob: str) -> dict[str, Any]:
        return self.read(f"{self.output}{blob}.result.json")

    def summary(self) -> dict[str, Any]:
        return self.read(self.output + "_summary.json")

    def exists(self, name: str) -> bool:
        return self.container.get_blob_client(name).exists()


@pytest.fixture
def batch(container: ContainerClient) -> Batch:
    return Batch(container)


@pytest.fixture
def sas(container: ContainerClient) -> str:
    return make_sas(container.container_name)


def contract(azurite: Azurite, batch: Batch, sas: str) -> dict[str, str]:
    return {
        "ML_BATCH_ID": batch.batch_id,
        "ML_ATTEMPT": "1",
        "ML_CONTAINER": batch.container.container_name,
        "ML_BATCH_PREFIX": batch.prefix,
        "ML_MANIFEST": batch.manifest,
        "ML_OUTPUT_PREFIX": batch.output,
        "ML_STORAGE_ACCOUNT_URL": azurite.blob_url,
        "ML_STORAGE_SAS": sas,
    }


@dataclass
class Run:
    code: int
    out: str  # stdout and stderr together: nothing secret may appear in either


def worker_env(env: dict[str, str]) -> dict[str, str]:
    """The test's contract on top of a clean environment (no stray ML_/AZURE_ variables)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "AZURE_", "WORKER_"))}
    return {**clean, **env}


def run_worker(env: dict[str, str]) -> Run:
    proc = subprocess.run(
        [sys.executable, "-m", "worker"],
        cwd=REPO_ROOT,
        env=worker_env(env),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    return Run(proc.returncode, proc.stdout + proc.stderr)


def assert_no_secret(run: Run, sas: str) -> None:
    signature = next(p[4:] for p in sas.split("&") if p.startswith("sig="))
    assert sas not in run.out
    assert signature not in run.out
    assert "sig=" not in run.out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sas_has_no_list_or_delete(batch: Batch, azurite: Azurite, sas: str) -> None:
    """Guard for the other tests: Azurite enforces the SAS, so the worker truly lacks list."""
    restricted = ContainerClient(azurite.blob_url, batch.container.container_name, credential=sas)
    batch.put("x.txt", b"x")
    with pytest.raises(HttpResponseError) as info:
        list(restricted.list_blobs())
    assert info.value.status_code == 403
    with pytest.raises(HttpResponseError):
        restricted.delete_blob(batch.prefix + "x.txt")


def test_mixed_batch_succeeds(batch: Batch, azurite: Azurite, sas: str) -> None:
    readme = b"hello world\nsecond line here\n"
    table = b'id,name,score\r\n1,Ann,3\r\n2,"Bo, Jr",4\r\n3,"multi\nline",5\r\n\r\n'
    tsv = b"a\tb\n1\t2\n3\n"
    settings = b'{"a": [1, 2, {"b": null}], "c": "x"}'
    unicode_text = "héllo wörld 文件\n".encode()
    raw = bytes(range(256)) * 4
    renamed_name = "deep/" + "n" * 1100 + ".csv"
    renamed_blob = "_renamed/" + sha(f"incoming/{renamed_name}".encode())
    long_blob = "long/" + "y" * 975 + ".txt"
    files = [
        batch.add("docs/readme.txt", readme),
        batch.add("data/table.csv", table),
        batch.add("data/t.tsv", tsv),
        batch.add("conf/settings.json", settings),
        batch.add("empty.txt", b""),
        batch.add("résumé/naïve 文件.md", unicode_text),
        batch.add("img/raw.bin", raw),
        batch.add("notes/README", b"plain text without extension\n"),
        batch.add("docs/x_READY", b"not a marker"),
        batch.add(renamed_name, b"x,y\n1,2\n", blob=renamed_blob),
        batch.add(long_blob, b"one two\n"),
        # Markers are never uploaded: reading one would fail the batch with a 404.
        batch.add("_READY", None),
        batch.add("docs/_READY", None),
    ]
    batch.write_manifest(files, ready_marker="_READY")

    run = run_worker(contract(azurite, batch, sas))

    assert run.code == 0, run.out
    assert_no_secret(run, sas)
    assert f"batch {BATCH_ID} attempt 1: 11 inputs (2 ready markers skipped)" in run.out
    assert "processed docs/readme.txt: 2 lines, 5 words" in run.out
    assert "processed résumé/naïve 文件.md: 1 lines, 3 words" in run.out

    r = batch.result("docs/readme.txt")
    assert r["status"] == "ok" and r["batch_id"] == BATCH_ID and r["attempt"] == 1
    assert (r["size"], r["sha256"], r["kind"]) == (len(readme), sha(readme), "text")
    assert r["text"] == {"lines": 2, "words": 5, "chars": 29, "detected_by": "extension"}
    assert r["input"] == batch.prefix + "docs/readme.txt"

    r = batch.result("data/table.csv")
    assert r["csv"] == {"delimiter": ",", "rows": 3, "columns": 3, "ragged_rows": 0}
    assert r["text"]["lines"] == 6 and r["sha256"] == sha(table)
    r = batch.result("data/t.tsv")
    assert r["csv"] == {"delimiter": "\t", "rows": 2, "columns": 2, "ragged_rows": 1}

    r = batch.result("conf/settings.json")
    assert r["json"] == {"valid": True, "top_level": "object"}
    assert r["text"]["lines"] == 1

    r = batch.result("empty.txt")
    assert (r["size"], r["sha256"]) == (0, sha(b""))
    assert r["text"]["lines"] == 0 and r["text"]["words"] == 0

    r = batch.result("résumé/naïve 文件.md")
    assert r["name"] == "résumé/naïve 文件.md"
    assert r["text"] == {"lines": 1, "words": 3, "chars": 15, "detected_by": "extension"}

    r = batch.result("img/raw.bin")
    assert r["kind"] == "binary" and "text" not in r
    assert r["binary_reason"] == "invalid UTF-8 at byte 128"
    assert r["sha256"] == sha(raw) and r["size"] == 1024

    r = batch.result("notes/README")
    assert r["text"]["detected_by"] == "content" and r["text"]["words"] == 4
    assert batch.result("docs/x_READY")["status"] == "ok"

    # `_renamed/<hex>`: read from the safe blob, typed by the user's (long) name.
    r = batch.result(renamed_blob)
    assert r["name"] == renamed_name and r["blob"] == renamed_blob
    assert r["csv"]["rows"] == 1 and r["csv"]["columns"] == 2

    # A result name past 1,024 characters is hashed and mapped in the summary.
    hashed = f"{batch.output}_results/{sha(long_blob.encode())[:32]}.result.json"
    assert batch.read(hashed)["blob"] == long_blob

    for marker in ("_READY", "docs/_READY"):
        assert not batch.exists(f"{batch.output}{marker}.result.json")

    summary = batch.summary()
    assert summary["status"] == "succeeded" and summary["exit_code"] == 0
    assert (summary["batch_id"], summary["attempt"]) == (BATCH_ID, 1)
    assert summary["started_at"] <= summary["finished_at"]
    totals = summary["totals"]
    assert totals["inputs"] == 11 and totals["succeeded"] == 11 and totals["failed"] == 0
    assert totals["skipped_markers"] == 2
    assert totals["bytes"] == sum(f["size"] for f in files)
    assert totals["csv_rows"] == 3 + 2 + 1
    assert summary["errors"] == []
    assert {s["name"] for s in summary["skipped"]} == {"_READY", "docs/_READY"}
    assert summary["hashed_result_names"] == {long_blob: hashed}
    by_name = {f["name"]: f for f in summary["files"]}
    assert by_name["data/table.csv"]["csv"]["rows"] == 3
    assert by_name[long_blob]["result"] == hashed


def test_invalid_utf8_csv_fails_with_exit_2(batch: Batch, azurite: Azurite, sas: str) -> None:
    bad = b"id,name\n1,caf\xe9\n"  # Latin-1 'é' at byte 13
    batch.write_manifest([batch.add("good.txt", b"fine\n"), batch.add("data/bad.csv", bad)])

    run = run_worker(contract(azurite, batch, sas))

    assert run.code == 2, run.out
    assert_no_secret(run, sas)
    assert "FAILED: input data/bad.csv is unreadable: invalid UTF-8 at byte 13" in run.out
    summary = batch.summary()
    assert summary["status"] == "failed" and summary["exit_code"] == 2
    assert summary["errors"] == [
        {
            "name": "data/bad.csv",
            "blob": "data/bad.csv",
            "kind": "unreadable",
            "error": "invalid UTF-8 at byte 13",
        }
    ]
    assert summary["totals"]["succeeded"] == 1 and summary["totals"]["failed"] == 1
    assert batch.result("good.txt")["status"] == "ok"
    assert batch.result("data/bad.csv")["status"] == "error"


def test_invalid_json_fails_with_exit_2(batch: Batch, azurite: Azurite, sas: str) -> None:
    batch.write_manifest([batch.add("cfg/broken.json", b'{"a": 1,\n "b": }')])

    run = run_worker(contract(azurite, batch, sas))

    assert run.code == 2, run.out
    expected = "invalid JSON: expected a value at line 2 column 7"
    assert f"FAILED: input cfg/broken.json is unreadable: {expected}" in run.out
    assert batch.summary()["errors"][0]["error"] == expected


def test_missing_input_blob_fails_with_exit_2(batch: Batch, azurite: Azurite, sas: str) -> None:
    batch.write_manifest([batch.add("here.txt", b"a b c"), batch.add("gone/missing.txt", None)])

    run = run_worker(contract(azurite, batch, sas))

    assert run.code == 2, run.out
    assert_no_secret(run, sas)
    assert (
        f"FAILED: input gone/missing.txt is unreadable: blob {batch.prefix}gone/missing.txt "
        "not found (404)"
    ) in run.out
    errors = batch.summary()["errors"]
    assert [e["name"] for e in errors] == ["gone/missing.txt"]


def test_a_missing_manifest_means_the_batch_moved_on_and_nothing_is_written(
    batch: Batch, azurite: Azurite, sas: str
) -> None:
    """A group deployed again by a late PUT after its batch finished (and left processing/)
    must not touch the finished batch's outputs."""
    batch.container.upload_blob(batch.output + "_summary.json", b'{"exit_code": 0}')
    run = run_worker(contract(azurite, batch, sas))

    assert run.code == 5, run.out
    assert f"manifest {batch.manifest} not found" in run.out and "moved on" in run.out
    assert batch.summary() == {"exit_code": 0}  # the real run's summary is untouched
    assert not batch.exists(batch.output + "_error.json")


@pytest.mark.parametrize("missing", REQUIRED_VARS)
def test_missing_env_var_exits_1_naming_it(
    missing: str, batch: Batch, azurite: Azurite, sas: str
) -> None:
    env = contract(azurite, batch, sas)
    del env[missing]

    run = run_worker(env)

    assert run.code == 1, run.out
    assert f"configuration error: {missing} is not set" in run.out
    assert "FAILED: configuration error" in run.out
    assert_no_secret(run, sas)


def test_invalid_attempt_exits_1(batch: Batch, azurite: Azurite, sas: str) -> None:
    run = run_worker({**contract(azurite, batch, sas), "ML_ATTEMPT": "two"})

    assert run.code == 1
    assert "ML_ATTEMPT='two' is not an integer" in run.out


def test_rejected_sas_exits_3_without_printing_it(batch: Batch, azurite: Azurite) -> None:
    """A SAS the service refuses is a storage error (a relaunch may help), never echoed."""
    batch.write_manifest([batch.add("a.txt", b"a")])
    wrong_key = "d3Jvbmcga2V5IGZvciB0aGUgd29ya2VyIHRlc3Qgb25seSAwMTIzNDU2Nzg5YWJjZGVm"
    bad_sas = make_sas(batch.container.container_name, key=wrong_key)

    run = run_worker(contract(azurite, batch, bad_sas))

    assert run.code == 3, run.out
    assert f"cannot read manifest {batch.manifest}: storage error 403" in run.out
    assert_no_secret(run, bad_sas)
    with pytest.raises(ResourceNotFoundError):
        batch.summary()


def peak_rss_mib(pid: int) -> float | None:
    """The process's own high-water RSS (VmHWM), unlike RUSAGE_CHILDREN which also counts the
    parent's pages at exec time; None once the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_large_input_streams_with_bounded_memory(
    batch: Batch, azurite: Azurite, sas: str, tmp_path: Path
) -> None:
    line = b"lorem ipsum dolor sit amet 0123456789\n"
    count = (64 * 1024 * 1024) // len(line)
    batch.write_manifest([batch.add("big/app.log", line * count)])
    env = worker_env({**contract(azurite, batch, sas), "WORKER_CONCURRENCY": "2"})
    log = tmp_path / "worker.log"

    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker"], cwd=REPO_ROOT, env=env, stdout=out, stderr=out
        )
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, peak_rss_mib(proc.pid) or 0.0)
            time.sleep(0.02)

    assert proc.returncode == 0, log.read_text()
    r = batch.result("big/app.log")
    assert r["text"]["lines"] == count and r["text"]["words"] == 6 * count
    assert r["sha256"] == hashlib.sha256(line * count).hexdigest()
    # Baseline is ~50 MiB; a read-everything worker would add the 64 MiB input and its text.
    assert 0 < peak < 100, f"worker peaked at {peak:.0f} MiB"


@pytest.mark.parametrize(
    "doc",
    [
        '{"a": [1, 2.5e-3, -0, true, false, null, "x\\u00e9\\n"]}',
        ' "text" ',
        "[1,]",
        '{"a":1,}',
        '{"a" 1}',
        "[1 2]",
        '"\x01"',
        '"\\x"',
        "[",
        "",
        "01",
        "1.",
        "tru",
        "[1]\n]",
        '{"k":"v"',
        "[\n1,\n2\n,\n]",
        '"\\ud800"',
        "[-1.5E+10, 0.0]",
    ],
)
def test_json_validator_agrees_with_json_loads_at_every_split(doc: str) -> None:
    def validate(chunk: int) -> tuple[int, int] | None:
        v = JsonValidator()
        try:
            for i in range(0, len(doc), chunk):
                v.feed(doc[i : i + chunk])
            v.close()
        except JsonSyntaxError as exc:
            return exc.line, exc.column
        return None

    try:
        json.loads(doc)
        reference_ok = True
    except json.JSONDecodeError:
        reference_ok = False
    outcomes = {validate(chunk) for chunk in range(1, len(doc) + 2)}
    assert len(outcomes) == 1, f"chunking changed the verdict: {outcomes}"
    assert (outcomes.pop() is None) == reference_ok


def test_an_attempt_that_is_not_current_does_nothing(
    batch: Batch, azurite: Azurite, sas: str
) -> None:
    """A late PUT (of a launcher that stalled past its lease) deploys the group again after the
    janitor moved the batch on: the container must not run the batch a second time."""
    entry = batch.add("a.txt", b"hello")
    batch.write_manifest([entry], state="claimed", attempt=1)  # waiting for attempt 2
    run = run_worker(contract(azurite, batch, sas))
    assert run.code == 5, run.out
    assert "not run" in run.out
    assert not batch.exists(batch.output + "_summary.json")
    assert not batch.exists(batch.prefix + "_logs/attempt-1.started")


def test_a_second_start_of_one_attempt_repeats_its_exit_code_without_work(
    batch: Batch, azurite: Azurite, sas: str
) -> None:
    """ACI runs a terminated group again when a PUT for it arrives late; the second start
    finds the attempt's start marker, does nothing and repeats the first run's exit code, so
    the janitor records the outcome of the run that did the work."""
    bad = batch.add("bad.json", b"{not json")
    batch.write_manifest([bad])
    first = run_worker(contract(azurite, batch, sas))
    assert first.code == 2, first.out
    summary = batch.read(batch.output + "_summary.json")
    batch.container.delete_blob(batch.output + "_summary.json")
    second = run_worker(contract(azurite, batch, sas))
    assert second.code == 2, second.out
    assert "already started once" in second.out
    assert not batch.exists(batch.output + "_summary.json")  # no work the second time
    assert summary["exit_code"] == 2


def test_the_worker_saves_its_complete_log_next_to_the_batch(
    batch: Batch, azurite: Azurite, sas: str
) -> None:
    """ACI keeps only the tail of a stopped container's log; the worker's own copy is whole."""
    entries = [batch.add(f"f{i:04d}.txt", b"x\n") for i in range(1200)]
    batch.write_manifest(entries)
    run = run_worker(contract(azurite, batch, sas))
    assert run.code == 0, run.out[-2000:]
    log = batch.container.download_blob(batch.prefix + "_logs/attempt-1.worker.log").readall()
    text = log.decode()
    assert "worker" in text.splitlines()[0] and "starting" in text.splitlines()[0]
    assert "succeeded" in text.splitlines()[-1]
    assert_no_secret(Run(0, text), sas)
