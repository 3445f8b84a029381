"""Benchmark: cheap when idle, fast when busy, measured against the one-by-one baseline.

    .venv/bin/python -m scripts.bench [--tiny] [--json FILE] [--delay-ms 20] [--strict]

Runs the app's public entry points (`config.load_settings`, `launcher.clients.build_clients`,
`launcher.poll.poll`, `cleanup.sweep.sweep`) against Azurite and the local ACI emulator, each
behind its own loopback counting proxy (`python -m localdev.proxy`) that adds a fixed delay per
request (default 20 ms, standing in for a cloud round trip) and counts requests by kind.

How it measures, and why:
- The proxies, and every measured tick or sweep, run as processes of their own: in one process
  they would share the GIL with the SDK's I/O threads and distort the speed figures, and a tick
  alone in its process has a peak memory that is the tick's own.
- Peak memory is the worker's VmHWM from /proc, not `getrusage().ru_maxrss`: on Linux the
  latter carries the parent's peak over fork/exec, so a child started by a big orchestrator
  would report the orchestrator's memory.
- Every measured run starts with a fresh, empty Azurite (same port, behind the same proxy), so
  left-overs of one scenario cannot slow the next; the scale row compares its two ticks at the
  SAME store size (the smaller tick runs next to ballast blobs in another container).
- Azurite runs with a Node preload, localdev/azurite_fast_delete.js (--stock-azurite: without).
  Stock Azurite deletes a blob through LokiJS `findAndRemove`, which re-sorts all four indices
  of its blob table on every call: one Delete Blob costs O(n log n) in the blobs stored (~2.5 ms
  of its single thread at 1,000-2,000 blobs, ~28 ms at 10,000; techfort/LokiJS#773), after
  looking the row up twice by scanning every blob of the account. Real Blob Storage has no such
  cost. On a 2-core machine it made the emulator the limit of the project and of the ceiling
  loop, while the latency-bound baseline hid it, so the speedup row measured Azurite. The preload
  looks the row up by blob name first and removes a single matched row through LokiJS' own
  in-place index update (same rows removed, same answers: tests/test_bench.py runs one script
  against both). The
  claim section adds one round on stock Azurite as an informational row, and the JSON keeps
  Azurite's CPU time for every run.
- Figures compared with each other are measured in the same run through the same proxies and
  are reported as ratios (medians over --rounds rounds). No absolute timing is asserted.
- The CPU seconds of the worker, Azurite, the emulator and both proxies are recorded per run
  (JSON `raw`), with the load average: on a shared or small machine the emulator, not the app,
  is often the limit, and these numbers show which: on 2 cores Azurite (one Node thread, about
  1.2 ms of CPU per copy and, with the preload, 1 ms per delete) still bounds both the project
  and the ceiling loop, while the baseline is bound by latency.

Rows (each with its figure, its target and whether it is met):
  1. idle poll tick: storage requests (= 1) and ARM requests (= 0);
  2. idle sweep: ARM requests (= 1) and storage requests (<= 2: the listing of processing/ and,
     for the stall alarm, one of incoming/);
  3. claiming N files in one tick: storage requests per file (<= 2 + 50/N: one copy and one
     delete per file, plus at most 50 per tick for list pages, manifests, lease, recovery list;
     the app sends the deletes as Blob Batch requests of 64, so it needs about 1 + 1/64);
  4. claim speed: files/s of this project (a whole tick: list, lease, manifests, launches), of
     the seed system's one-by-one loop (copy, then delete, each file in turn; on a sample of
     --baseline-files, its rate per file does not depend on the count) and of a raw concurrent
     copy-and-delete loop as wide as IO_CONCURRENCY (the ceiling), measured back to back in
     each round; targets: >= 10x the baseline, >= 0.8 of the ceiling (medians of the rounds);
  5. scale: 10x the files waiting, all claimed in one tick, the tick process's peak memory
     < 200 MB, the poll lease held throughout (sampled from outside while the tick runs, and
     the tick's own `lease_lost` false) and tick time growing at most linearly (+ --tolerance);
  6. launch: ARM requests per launched batch (<= 2) and the time from the tick's listing of a
     10-file drop to ARM accepting the group's PUT (< 1 s: never the SDK's 30 s LRO poll);
  7. sweep of G finished groups: wall time, ARM requests per finished group (<= 4), storage
     requests per finished batch (<= 2 per blob moved + 9, two of them the history index
     entries) and how many requests were in flight on average (concurrent, bounded by
     SWEEP_CONCURRENCY);
  8. history: the newest page of 50 batches, all states and `failed` only, at 1,000 and at
     20,000 finished batches (index entries written directly, not measured): storage requests
     (the same at both sizes, <= 5) and time (< 0.5 s at 20 ms per request).
  9. backlog, with the caps 2 batches of 100 a tick: with 100,000 files waiting, the tick
     process's peak memory (< 200 MB and no more than with 10,000 waiting), the time from the
     tick's start to the first group PUT accepted (< 3 s) and its storage requests (at most 5 %
     more than a tick claiming the same 200 files with nothing else waiting); with no room,
     one List Blobs request; 10,000 blocked (archived) files in front of 1,000 claimable ones,
     which that tick claims; and a 2,000-file backlog drained 200 a tick with nothing lost or
     claimed twice (name and content hash, as scripts/chaos checks). The files are uploaded
     48 at a time straight to Azurite (not measured; the row says how long it all took).

`--tiny` (50 / 200 files, 10 groups, a 2,000-file backlog) runs in about two minutes;
tests/test_bench.py runs it and checks the count-based rows. `--only backlog` runs row 9 alone
(7.5 minutes in full on a busy 2-CPU machine, most of it uploading). The batches of row 7 are set up with the app's
own claim and launch functions directly against the emulators (no proxy, not measured), because
ACI's create rate (MAX_CREATES_PER_5_MIN <= 100) would otherwise take several ticks five minutes
apart.

Layout: `__main__` (the command line), `sections` (the registry of row groups, in run order),
one module per row group (`idle`, `claim`, `scale`, `launch`, `sweep`, `history`, `backlog`:
its targets, its setup helpers and its `run(bench)`), `harness` (`Bench`: Azurite, the emulator,
the proxy processes and the worker processes), `worker` (one measured operation in a process of
its own, `python -m scripts.bench.worker`), `common` (`Row`, `Config`, the proxies' control
endpoint) and `report` (the table and the JSON).
"""
