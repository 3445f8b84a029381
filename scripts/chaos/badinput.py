"""Scenario badinput: a corpus of awkward blobs, each recorded with what happened to it."""

from __future__ import annotations

import hashlib
import random
import unicodedata
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobBlock, BlobLeaseClient, ContainerClient, ContentSettings

import config

from .checks import Checker, add_verdict, content_for, sha
from .core import GIB, MIB, Mode, log
from .drive import drive
from .report import CheckResult, Report, Row
from .stack import Dropped, Stack, labelled


@dataclass
class Awkward:
    """One kind of awkward blob: its name below incoming/, how it is made, what may happen."""

    kind: str
    name: str
    how: str = "block"
    data: bytes | None = None
    expect: frozenset[str] = frozenset({"batch"})
    mid_claim: str | None = None  # overwrite|delete + _before_copy|_before_delete


STAY = frozenset({"incoming"})
GONE = frozenset({"gone"})


def awkward_corpus(big_block_mib: int) -> list[Awkward]:
    """At least 30 kinds; names are relative to incoming/ (full names must fit 1,024 chars)."""
    # processing/<22-char batch id>/ is the longest batch folder: relative names up to 990
    # characters are kept as they are, longer ones are stored as _renamed/<sha256>.
    keep = 1024 - len("processing/") - 22 - 1
    return [
        Awkward("plain name", "plain.txt"),
        Awkward("spaces in folder and file", "with space/and  more spaces.txt"),
        Awkward("leading and trailing spaces", " lead and trail .txt "),
        Awkward("unicode (NFC) folder and file", "ünïcødé/文件.txt"),
        Awkward("unicode NFD twin of an NFC name", unicodedata.normalize("NFD", "café.txt")),
        Awkward("unicode NFC twin of an NFD name", unicodedata.normalize("NFC", "café.txt")),
        Awkward("emoji", "emoji-😀.bin"),
        Awkward("right-to-left override", "rtl-\u202etxt.exe"),
        Awkward("zero-width space and BOM", "\ufeffzero\u200bwidth.txt"),
        Awkward("literal percent-encoding", "100%25 done %41%2F.txt"),
        Awkward("query and fragment characters", "q?sig=abc&x=1#frag.txt"),
        Awkward("URL-reserved characters", "semi;colon,comma'q\"dq+plus=eq@at!$&()*.txt"),
        Awkward("XML special characters", "<tag>&amp;]]>.txt"),
        Awkward("backslash (storage turns it into /)", "back\\slash.txt"),
        Awkward("segment ending in a dot", "dir./x."),
        Awkward("dots-only segment", ".../x.txt"),
        Awkward("hidden-file name", ".hidden"),
        Awkward("empty segment (double slash)", "double//slash.txt"),
        Awkward("leading slash after the prefix", "/leading.txt"),
        Awkward("whitespace-only segment", "   /x.txt"),
        Awkward("tab, CR and LF in the name", "tab\there\rcr\nnewline INFO forged.txt"),
        Awkward("DEL character", "del\x7f.txt"),
        Awkward("app's own names", "_batch.json"),
        Awkward("app's own folders", "_logs/attempt-1.log"),
        Awkward("app's rename folder", "_renamed/0123abcd"),
        Awkward("Windows reserved names", "CON/aux.txt"),
        Awkward("case twin (upper)", "Case.txt"),
        Awkward("case twin (lower)", "case.txt"),
        Awkward("single-character names", "~"),
        Awkward("looks like another state folder", "processing/../done/evil.txt"),
        Awkward("longest name kept as is (990)", "k" * (keep - 4) + ".txt"),
        Awkward("one character longer (renamed)", "r" * (keep - 3) + ".txt"),
        Awkward("name at the 1,024-character limit", "n" * (1024 - len("incoming/"))),
        Awkward("very long single segment", "s" * 300 + "/x.txt"),
        Awkward("deep nesting (200 levels)", "d/" * 200 + "x.txt"),
        Awkward("zero bytes", "empty.txt", data=b""),
        Awkward("folder marker (trailing slash)", "folder/", data=b"", expect=STAY),
        Awkward("folder marker (hdi_isfolder)", "hdi-folder", how="hdi", data=b"", expect=STAY),
        Awkward("metadata and content headers", "meta.txt", how="meta"),
        Awkward("append blob", "append.log", how="append"),
        Awkward("page blob", "disk.vhd", how="page"),
        Awkward("1 GiB sparse page blob (server-side copy only)", "big-1GiB.page", how="sparse"),
        Awkward(f"{big_block_mib} MiB block blob (server-side copy only)", "big.bin", how="big"),
        Awkward("snapshot leftovers", "snapshotted.txt", how="snapshot"),
        Awkward("leased by its user", "leased.txt", how="leased", expect=STAY),
        Awkward("archive tier", "archived.txt", how="archive", expect=STAY),
        Awkward("uncommitted blocks only", "uncommitted.bin", how="uncommitted", expect=STAY),
        Awkward("overwritten before its copy", "ow-copy.txt", mid_claim="overwrite_before_copy"),
        Awkward("overwritten after its copy", "ow-delete.txt", mid_claim="overwrite_before_delete"),
        Awkward(
            "deleted before its copy", "rm-copy.txt", mid_claim="delete_before_copy", expect=GONE
        ),
        Awkward(
            "deleted after its copy",
            "rm-delete.txt",
            mid_claim="delete_before_delete",
            expect=GONE,
        ),
        Awkward("dot segments (../)", "../escape.txt"),
        Awkward("dot segments (./)", "a/./b.txt"),
        Awkward("name over the 1,024-character limit", "o" * (1025 - len("incoming/"))),
        Awkward("C0 control character (U+0001)", "ctl\x01.txt"),
        Awkward("noncharacter U+FFFE", "nonchar\ufffe.txt"),
    ]


def _make_blob(
    container: ContainerClient, a: Awkward, name: str, rng: random.Random, big_mib: int
) -> Dropped:
    """Create one awkward blob; returns what the checker should find (content or samples)."""
    client = container.get_blob_client(name)
    data = a.data if a.data is not None else content_for(name, rng)
    if a.how == "hdi":
        client.upload_blob(data, metadata={"hdi_isfolder": "true"})
    elif a.how == "meta":
        client.upload_blob(
            data,
            metadata={"owner": "chaos", "note": "x" * 200},
            content_settings=ContentSettings(
                content_type="text/csv; charset=latin-1",
                content_encoding="identity",
                content_disposition='attachment; filename="x.csv"',
            ),
        )
    elif a.how == "append":
        client.create_append_blob()
        client.append_block(data[:5])
        client.append_block(data[5:])
    elif a.how == "page":
        data = (data * (1024 // max(len(data), 1) + 1))[:1024]
        client.create_page_blob(1024)
        client.upload_page(data, offset=0, length=1024)
    elif a.how == "sparse":
        client.create_page_blob(GIB)  # 1 GiB of zeros that costs nothing to create
        zeros = sha(bytes(MIB))
        return Dropped(name, "", GIB, samples=(zeros, zeros), expect=a.expect)
    elif a.how == "big":
        return _upload_big(client, name, rng, a, big_mib)
    elif a.how == "snapshot":
        client.upload_blob(b"old version\n")
        client.create_snapshot()
        client.upload_blob(b"middle version\n", overwrite=True)
        client.create_snapshot()
        client.upload_blob(data, overwrite=True)
    elif a.how == "uncommitted":
        client.stage_block("YmxvY2sx", data)
    else:
        client.upload_blob(data, overwrite=True)
        if a.how == "leased":
            BlobLeaseClient(client).acquire(-1)
        elif a.how == "archive":
            client.set_standard_blob_tier("Archive")
            md5 = hashlib.md5(data).digest()
            return Dropped(name, sha(data), len(data), md5=md5, expect=a.expect)
    return Dropped(name, sha(data), len(data), expect=a.expect)


def _upload_big(client: Any, name: str, rng: random.Random, a: Awkward, mib: int) -> Dropped:
    """A real block blob of `mib` MiB, uploaded in 64 MiB blocks (each block distinct)."""
    block = min(mib, 64) * MIB
    pattern = rng.randbytes(MIB)
    ids, first, last = [], b"", b""
    for i in range(mib * MIB // block):
        data = (i.to_bytes(8, "big") + pattern[8:]) * (block // MIB)
        block_id = f"{i:08d}".encode().hex()
        client.stage_block(block_id, data)
        ids.append(BlobBlock(block_id=block_id))
        first = first or data[:MIB]
        last = data[-MIB:]
    client.commit_block_list(ids)
    return Dropped(name, "", mib * MIB, samples=(sha(first), sha(last)), expect=a.expect)


def scenario_badinput(stack: Stack, mode: Mode, rng: random.Random, report: Report) -> Row:
    row = Row("bad input: awkward blobs", trials=1)
    arena = stack.arena("badinput")
    corpus = awkward_corpus(mode.big_block_mib)
    records: dict[str, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    made: dict[str, Awkward] = {}
    for index, a in enumerate(corpus):
        name = "incoming/" + a.name
        rec: dict[str, Any] = {"kind": a.kind, "name": _show(name), "expected": sorted(a.expect)}
        records[a.kind] = rec
        if a.how == "uncommitted":
            # Not a blob yet: invisible to listings, so it is not a dropped file.
            _make_blob(arena.container, a, name, rng, mode.big_block_mib)
            made[name] = a
            continue
        try:
            listed_before = {
                b.name
                for b in arena.container.list_blobs(name_starts_with="incoming/", retry_total=0)
            }
        except HttpResponseError:
            listed_before = set()
        try:
            d = _make_blob(arena.container, a, name, rng, mode.big_block_mib)
        except HttpResponseError as exc:
            rec["outcome"] = (
                f"rejected by storage at upload (HTTP {exc.status_code}): never dropped"
            )
            continue
        # Storage may store another name (a backslash becomes /): take the name it listed.
        try:
            listed = {
                b.name
                for b in arena.container.list_blobs(name_starts_with="incoming/", retry_total=0)
            }
        except HttpResponseError as exc:
            # Azurite cannot list some names (real Azure returns them URL-encoded): remove it
            # again, or every later listing of the container fails too.
            arena.container.get_blob_client(name).delete_blob(delete_snapshots="include")
            rec["outcome"] = (
                f"not testable on Azurite: its List Blobs fails (HTTP {exc.status_code}) "
                "while this name exists; removed again"
            )
            continue
        new = sorted(listed - listed_before)
        if len(new) != 1:
            rec["outcome"] = f"storage listed {len(new)} new blobs for it: {new!r}"
            row.failures.append(f"bad input {a.kind}: could not identify its blob")
            continue
        d.name = new[0]
        rec["stored_as"] = _show(new[0]) if new[0] != name else None
        arena.dropped[d.name] = d
        labels[d.name] = f"b{index}"
        made[d.name] = a
    # One proxy for this scenario: counts requests per blob (downloads of the big ones must stay
    # at zero) and fires the mid-claim changes.
    storage = stack.storage_proxy(classify=labelled(labels, arena.name))
    for name, a in made.items():
        if a.mid_claim is None:
            continue
        action, _, step = a.mid_claim.partition("_before_")
        kind = "copy" if step == "copy" else "delete"

        def change(n: str = name, act: str = action) -> None:
            client = arena.container.get_blob_client(n)
            if act == "delete":
                client.delete_blob()
                return
            data = content_for(n + " (new version)", rng)
            client.upload_blob(data, overwrite=True)
            arena.dropped[n] = Dropped(n, sha(data), len(data))

        storage.add_trigger(f"{kind}:{labels[name]}", 1, change, when="before", then="continue")
    env = stack.env(arena, storage, None, {config.BATCH_MAX_FILES: "6"})
    allowed = {n for n, d in arena.dropped.items() if d.expect == STAY}
    stats = drive(
        stack, arena, env, env, "badinput", seconds=mode.scenario_seconds, allowed_incoming=allowed
    )
    v = Checker(stack).check(arena)
    add_verdict(row, v, "bad input")
    if not stats.quiet:
        row.failures.append(f"not quiescent after {mode.scenario_seconds:.0f}s")
    logs = "".join(p.read_text(errors="replace") for p in stack.logdir.glob("badinput.*.err"))
    counts = storage.counts()
    for name, a in made.items():
        rec = records[a.kind]
        label = labels.get(name)
        downloads = counts.get(f"get_blob:{label}", 0) if label else 0
        if a.how == "uncommitted":
            blobs = list(
                arena.container.list_blobs(name_starts_with=name, include=["uncommittedblobs"])
            )
            ok = len(blobs) == 1
            rec["outcome"] = "left alone: invisible until committed" + ("" if ok else " (GONE?)")
            rec["ok"] = ok
            continue
        rec["outcome"] = v.where.get(name, "?")
        rec["ok"] = name not in v.lost and name not in v.duplicated and name not in v.stuck
        if a.how in ("big", "sparse"):
            rec["downloads"] = downloads
            ok = downloads == 0
            rec["ok"] = rec["ok"] and ok
            report.checks.append(
                CheckResult(
                    f"{a.kind}: claimed and moved to done/ without a download",
                    ok and rec["outcome"].startswith("claimed"),
                    f"{downloads} GET Blob request(s) for it; {rec['outcome']}",
                )
            )
        if a.expect == STAY and a.how not in ("hdi",) and not name.endswith("/"):
            # Left alone on purpose: the poll must say why, naming the file.
            line = next((ln for ln in logs.splitlines() if name in ln), None)
            rec["log_line"] = line.split(": ", 1)[-1][:160] if line else None
            rec["ok"] = rec["ok"] and line is not None
        if downloads and a.how not in ("big", "sparse"):
            rec["downloads"] = downloads
    for rec in records.values():
        rec.setdefault(
            "ok", "rejected" in rec.get("outcome", "") or "not testable" in rec.get("outcome", "")
        )
        if not rec["ok"]:
            row.failures.append(f"bad input {rec['kind']}: {rec.get('outcome')}")
    report.bad_input = list(records.values())
    untestable = sum(1 for r in records.values() if "not testable" in r.get("outcome", ""))
    rejected = sum(1 for r in records.values() if "rejected" in r.get("outcome", ""))
    invisible = sum(1 for a in made.values() if a.how == "uncommitted")
    row.notes.append(
        f"{len(records)} kinds: {len(arena.dropped)} blobs dropped, {invisible} never committed "
        f"(invisible), {rejected} refused by storage at upload, {untestable} not testable on "
        f"Azurite; {stats.runs} runs"
    )
    if stats.crashed:
        row.notes.append(f"unhandled exception in {stats.crashed[0]}")
    log(f"bad input: {v.summary()}")
    return row


def _show(name: str, width: int = 70) -> str:
    text = ascii(name)[1:-1]
    return (
        text
        if len(text) <= width
        else f"{text[: width // 2]}…{text[-width // 2 + 8 :]} ({len(name)} chars)"
    )
