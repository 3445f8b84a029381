"""Reliability suite: crash, race, fault, lease-theft, stall, clock-skew, operator-error,
refusal, bad-input, bad-config and security scenarios against the REAL pipeline, with figures.

Why this exists: the README promises that nothing dropped is lost, nothing runs twice, bad input
cannot escape its batch and bad settings stop the app before it touches anything. Unit tests
check each mechanism; this suite attacks the whole system the way production does (processes
killed mid-request, pollers racing, flaky networks, users doing odd things) and counts.

What runs: a real Azurite (`localdev.azurite.run_azurite`), the ACI emulator
(`localdev.aci_emulator.testing.start_emulator`, containers are local processes), the poll and
the janitor as separate processes (`python -m launcher poll`, `python -m cleanup sweep`, settings
in environment variables as in production) and loopback reverse proxies (`localdev.proxy`) in
front of both services for counting, fault injection and crash triggers. Every subprocess tags
its requests through `AZURE_HTTP_USER_AGENT`, so one shared proxy can aim a trigger at one trial
and one role (`copy:c7.poll` is the copy requests of crash trial 7's pollers).

Run `python -m scripts.chaos` from the repository root (`make chaos`; `--help` for the flags).

Scenarios, one module each (counts: `--quick` for `make test`, default = full for `make chaos`):
  crash     SIGKILL poll or sweep at a random request (storage copy/delete/put_blob/list, ARM
            put/delete/get/logs; before or after the service applied it); after a killed poll
            the user drops names again that the dead tick had taken; then run until quiet.
  race      three pollers and two sweepers looping concurrently while files arrive in waves.
  faults    10% of storage and of ARM requests fail (500, 503, 429 + Retry-After, connection
            dropped before or after the service applied the request); in the full run the
            first fault run uses the real sample worker image, which reads through the faults.
  lease     the poll lease is broken mid-claim and a second poller takes it at once; or it is
            broken while a group PUT is in flight and the new holder's tick runs first.
  stall     a poller's link (storage and ARM, shared with the others) stalls at its source
            deletes, a copy, its `claimed` manifest write or its group PUT for longer than
            LEASE_SECONDS and STUCK_CLAIM_SECONDS while another poller takes the batch over and
            sweepers run; then every held request lands (`stall.StallGate`).
  skew      pollers and sweepers at +600 s, -600 s and 0 (localdev/skew sitecustomize), folder
            mode, folders uploaded file by file with gaps under BATCH_SETTLE_SECONDS, the sample
            worker image: no folder split, every batch succeeds first time, no live claim
            recovered.
  operator  manifests truncated, reshaped or deleted while batches flow (quarantined, reported
            by id, others flow), then repaired or released; failed batches retried after their
            users dropped some names again (never overwritten; a second retry is a no-op).
  refusals  storage refuses to delete a quarter of the files for good (409 immutability, 403
            permission; a FAKE, localdev.proxy.Refusal): they stay in incoming/, are reported
            blocked and are copied once per version, never again.
  badinput  a corpus of awkward blobs (names, sizes, blob types, snapshots, leases, tiers,
            changes mid-claim), each recorded with what happened to it.
  config    every setting missing or malformed in turn: exit code 2, one message naming it,
            zero requests to storage or ARM (module badconfig.py: `config` is the app's).
  security  ops endpoints without/with wrong keys, dry runs, secrets in logs and in ARM,
            property tests (properties.py) of blob paths and group names from user input.

A file expected to stay in incoming/ (refused, or left there on purpose) is not stuck there;
a file its user replaced is "gone", and its new version is a dropped file of its own, so a
retry that overwrote it loses it.

Definitions checked from storage and ARM at the end of each scenario (`checks.Checker`):
  lost            a dropped file (name + content hash) in no finished batch (done/ or failed/
                  manifest lists it AND the input blob is there), not legitimately in incoming/
                  and not in an unfinished batch either (that is "stuck", counted as unfinished)
  duplicated      the same dropped file in more than one batch (or in one and still in
                  incoming/), except a file `cleanup retry` restored from a failed batch whose
                  copy there survived, and ran again: that is counted as retried, as intended
  kept            a dropped file in a batch folder without a readable manifest (quarantined by
                  the app): not lost, but the trial counts as unfinished
  double-launched a container group name created more than once, or redeployed (the emulator's
                  log records each create (ARM 201) and redeploy; a retried PUT that ARM answered
                  from the existing group is not a launch)
Limits: seeded (`--seed`), bounded counts and time, loopback only (nothing leaves 127.0.0.1).

Shared machinery: `core` (constants, `Mode` with its QUICK and FULL counts, `log`), `report`
(`Row`, `CheckResult`, `Report`, the printed table), `stack` (`Stack`: Azurite, the emulator,
tagged proxies, child processes and their settings; `Arena`, `Dropped`, `Run`), `checks`
(dropping files, `Verdict`, `Checker`, `add_verdict`), `drive` (poll/sweep until quiescent,
`run_parallel`), `suite` (the scenario registry, `run_suite`), `__main__` (the command line).

Adding a scenario: write `scripts/chaos/<name>.py` with one function `scenario_<name>(stack,
mode, rng, report) -> Row` that works in its own `stack.arena(...)` (a container and resource
group of its own, so scenarios can share the stack), drops files with `checks.drop_files`, runs
the real processes with `drive.drive` or `stack.run`, judges the end with `Checker(stack).check`
and `add_verdict`, and returns its row (extra pass/fail statements go to `report.checks`). Put
the counts and time bounds it needs in `core.Mode` (a value in both QUICK and FULL). Register it
in `suite.SCENARIOS`, the one registry `--only` and `run_suite` use (its order is the run and
report order; `suite.BACKGROUND` if it mostly waits), and name it in `tests/test_chaos.py`
SCENARIOS with what it must have done. Its rng is seeded from `--seed` and its name, so a new
scenario leaves the others' seeded choices as they were.
"""
