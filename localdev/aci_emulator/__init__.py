"""Local emulator of the Azure Container Instances ARM API (what Azurite is for Blob Storage).

`python -m localdev.aci_emulator` serves `Microsoft.ContainerInstance/containerGroups` at
api-version 2023-05-01 over HTTPS on 127.0.0.1, so the unmodified SDK
(`ContainerInstanceManagementClient(cred, sub, base_url=url, connection_verify=ca_pem)`) works
against it. Each container runs as a local process. Development and tests only.

Command line
------------
    python -m localdev.aci_emulator --port 0 --state-dir DIR --images localdev/images.json
        [--state-file groups.json]
        [--resource-group GLOB]... [--authorization-failed] [--quota N|none] [--cores-quota N]
        [--creates-per-5-minutes N] [--creates-per-hour N] [--deletes-per-5-minutes N]
        [--deletes-per-hour N] [--group-limits JSON] [--provision-timeout-seconds S]
        [--platform-kill-rate R] [--page-size 50] [--provision-seconds S] [--latency-ms MS]
        [--fault-429-rate R] [--retry-after S] [--fault-5xx-rate R] [--operation-retry-after S]
        [--fault-after-commit-rate R] [--fault-drop-rate R] [--seed N]
        [--unknown-image reject|pull-failure] [--kill-grace-seconds 2]
        [--restart-backoff-seconds 1] [--pass-env NAME]... [--exit-with-parent] [--log-level INFO]

On start it writes `DIR/ca.pem` (a throwaway trustme CA, new each run) and then
`DIR/emulator.json` = `{"url": "https://127.0.0.1:PORT", "ca": "DIR/ca.pem", "pid": N, "port": PORT,
"state_dir": ..., "api_version": "2023-05-01", "images": ...}` and logs one line with the URL.
SIGINT/SIGTERM (or, with `--exit-with-parent`, the death of the process that started it): stop
serving, kill every container process group, remove `emulator.json`. `DIR/emulator.lock` keeps a
second emulator off the same state dir.
Container output goes to `DIR/logs/<sub>/<rg>/<group>-<id>/<container>.log`; `DIR/pids/` lists live
container processes (a later run, or `testing.Emulator.stop`, kills leftovers of a crashed run).
State is in memory unless `--state-file FILE` (relative: to DIR) is given: then the groups are
written there (atomically, on changes, never a secret) and reloaded on start as Azure shows them
after an outage of their host (running containers Terminated with exit code 7148 and a Killing
event); see `persist` and docs/emulator.md. `make run` uses `.localdev/aci/groups.json`.

Any `Authorization: Bearer <anything>` is accepted; no header -> 401 `AuthenticationFailed`.

Image mapping (`--images`, default `localdev/images.json`)
---------------------------------------------------------
    {"images": [
      {"match": ["modellauncher/worker:*", "*modellauncher-worker*"],   # fnmatch globs or one string
       "command": ["{python}", "-m", "worker"],   # used when the container sets no `command`
       "cwd": "{repo}",                           # default {repo}; relative: to the mapping's folder
       "env": {"NAME": "value"},                  # extra environment (the container's wins)
       "aliases": {"python": "{python}"},         # argv[0] substitutions (a `command` of
                                                  #   ["python", ...] uses the emulator's Python)
       "pull": "ok"}                              # ok | fail (async pull failure) |
    ]}                                            #   inaccessible (400 at PUT)

Rules are tried in order; an image without tag or digest is also tried with `:latest`.
Placeholders: `{python}` = the emulator's sys.executable, `{repo}` = the repository root,
`{here}` = the mapping file's folder. A container's `command` replaces the rule's command (like
ACI's command overriding the image entrypoint). An image matching no rule is refused at PUT with
400 `InaccessibleImage` (what ACI does for a missing image), or with `--unknown-image pull-failure`
accepted and then failed like an image pull (below).

Process environment: only PATH, HOME, USER, LANG, LC_ALL, LC_CTYPE, TZ, TMPDIR, PYTHONPATH,
VIRTUAL_ENV, SYSTEMROOT (if set) and the `--pass-env` names are inherited from the emulator, plus
PYTHONUNBUFFERED=1; then the rule's `env`; then the container's environment variables, including
secure values (as in ACI, where secure values are ordinary variables inside the container).
stdout and stderr share one file descriptor, so the log keeps their order.

Behaviour (mirrors ACI; sources: the 2023-05-01 REST spec, Azure CLI/SDK recorded traffic,
Microsoft Learn "Azure Container Instances states", "Update containers in Azure Container
Instances", "Resource availability & quota limits for ACI" and troubleshooting pages). The
defaults are as strict as Azure; docs/emulator.md lists every strict behaviour, its source and
its option.
-------------------------------------------------------------------------------------------
- PUT new group -> 201, body `provisioningState: Pending`, `instanceView {state: Pending, events: []}`
  and an `Azure-AsyncOperation` header (`.../locations/<loc>/operations/<id>`), no Retry-After, as
  recorded from ACI. The operation's `status` follows provisioning (Pending, Creating, Succeeded,
  Failed). `provision_seconds` (default 2) is split between Pending and Creating (containers
  Waiting, event Pulling); once it is over, the containers start (Pulled, Created, Started
  events) and provisioning is Succeeded. With 0, the SDK poller's
  first status poll, which it makes without waiting, sees Succeeded. Between later polls the
  poller sleeps the response's Retry-After if any, else its `polling_interval` (SDK default 30 s).
  Recorded ACI traffic has no Retry-After there; by default the emulator sends the time left until
  provisioning ends, so no client waits 30 s for a 1 s provisioning (`operation_retry_after`:
  fixed seconds instead, 0 = none).
- PUT existing group ("Update containers in Azure Container Instances"): on a live group the
  same spec (tags aside) -> 200, nothing restarts; a modified property on a running group ->
  200, its containers restart in place (Killing event, restartCount + 1, new start time); a
  terminated group (Succeeded, Failed, Stopped) -> 200, deployed as new (new log, restartCount
  0): it runs again even with the same spec. Changing osType, restartPolicy, subnetIds, ports or
  CPU/memory/GPU -> 400 `InvalidContainerGroupUpdate`; anything but a same-spec PUT while
  provisioning -> 409 `ContainerGroupTransitioning`; another location -> 409
  `InvalidResourceLocation`.
- Container states: Running {startTime}; after exit Terminated {exitCode, startTime, finishTime,
  detailStatus Completed|Error}; death by signal N is exit code 128+N. Events: Pulling, Pulled,
  Created, Started (Killing on stop and update). Group `instanceView.state`: Pending -> Running -> Succeeded (all exit 0)
  or Failed (restartPolicy Never). OnFailure/Always rerun with back-off (Waiting
  "CrashLoopBackOff: Back-off restarting failed", previousState, restartCount).
- Pull failure (`pull: fail`, or unknown image with `--unknown-image pull-failure`): accepted (201),
  provisioningState stays `Creating` while the pull is retried with back-off (container Waiting
  `ErrImagePull`, Pulling/Failed/BackOff events counting up) until `provision_timeout_seconds`
  (default 1800) after the PUT; then provisioningState `Failed`, async op Failed; the group
  state stays `Pending` (ACI keeps trying after a Failed provisioning).
- GET includes instance views; list (by resource group / subscription) omits them and pages with
  `nextLink` (`$skiptoken`, stable under concurrent changes; `page_size`, default 50).
- DELETE -> 200 with the group (processes SIGTERM, then SIGKILL after `kill_grace_seconds`),
  204 if missing, 409 `ContainerGroupTransitioning` while provisioning.
- POST stop -> 204, processes killed, group state `Stopped`, containers Terminated (exit 143/137).
  POST start -> 202 (+Azure-AsyncOperation) reruns a stopped/finished group, 204 if running.
  POST restart -> 204 (+Azure-AsyncOperation). PATCH replaces tags.
- GET .../containers/<c>/logs?tail=N -> {"content": "..."} (the last 4 MB while the container
  runs, the last 16 KB / 1,000 lines once it has stopped; 409
  ContainerGroupTransitioning before the container started, 400 ContainerLogNotAvailable if it
  never will). `timestamps` is ignored.
- Never echoed: env `secureValue`, registry `password`, secret volume contents, Azure Files keys,
  Log Analytics workspace key, extension protected settings. Request bodies are never logged.
- Identity echo: SystemAssigned gets principalId/tenantId, each user-assigned identity
  principalId/clientId (stable fake GUIDs).
- Errors, always `{"error": {"code", "message"}}`: 400 InvalidContainerGroupName (1-63 lowercase
  letters, digits, single '-' inside), InvalidContainerName, DuplicateContainerName,
  InvalidRequestContent (missing image/containers/properties, bad JSON), ResourceRequestsNotSpecified,
  InvalidOsType, InvalidContainerEnvironmentVariable, InaccessibleImage, ContainerGroupQuotaReached
  (`quota` ContainerGroups and `cores_quota` StandardCores per subscription and region),
  InvalidSubscriptionId, InvalidResourceGroupName, LinkedInvalidPropertyId,
  MissingApiVersionParameter, NoRegisteredProviderFound (api-version other than 2023-05-01);
  404 ResourceNotFound, ResourceGroupNotFound (a resource group not in `resource_groups`); 409
  ServiceUnavailable (a group over `group_limits`, or GPU in a subnet) and the 409s above; 429
  ResourceRequestsThrottled (create/delete budget spent, long Retry-After); 403
  AuthorizationFailed (`authorization_failed`); 401 AuthenticationFailed.
- Creates and deletes spend per-(subscription, region) budgets (100 per 5 minutes, 300 per hour
  each); PUT and DELETE responses carry `x-ms-ratelimit-remaining-subscription-resource-requests-
  pt5m` / `-pt1h`. `platform_kill_rate` > 0: running containers are killed by "the platform"
  (exit code 7147 or 7148, event "Killing container (platform initiated)").

Faults (CLI flags, or at run time `POST /_emulator/config` with the same names in snake_case)
------------------------------------------------------------------------------------------
Control endpoints (HTTPS, no bearer needed, never faulted or counted): `GET|POST /_emulator/config`,
`GET /_emulator/stats` (requests by "METHOD kind", responses by status, faults, groups, running
processes), `POST /_emulator/stats/reset`, `GET /_emulator/groups` (pids, states, log paths),
`POST /_emulator/reset` ({"options": true} also restores the start options), `GET /_emulator/health`.

- `latency_ms`: sleep before every ARM request.
- `fault_429_rate` (+`retry_after`): 429 SubscriptionRequestsThrottled with Retry-After; and
  `fault_5xx_rate`: 500 InternalServerError or 503 ServiceUnavailable (with Retry-After). Both are
  answered BEFORE handling: the request changes nothing.
- `fault_after_commit_rate`: a mutation (PUT/PATCH/DELETE/POST) is applied, then answered with 500,
  as Azure sometimes does; a client retrying the PUT must adopt what it created.
- `fault_drop_rate`: the request is handled (applied if a mutation), then the connection is closed
  without an answer (the client sees a dropped connection / ServiceResponseError).
- `fault_queue`: deterministic faults for the next matching requests, e.g.
  `[{"fault": "after-commit", "method": "PUT"}, "429"]` (fault: 429|500|503|after-commit|drop;
  optional `method` and `kind`: container_group, list_resource_group, list_subscription, action,
  logs, operation). A queued fault wins over the rates.
- `seed`: reseeds the fault generator (four draws per request, so one seed and one request order
  give one fault sequence). Also: `provision_seconds`, `provision_timeout_seconds`, `page_size`,
  `quota`, `cores_quota`, `creates_per_5_minutes`, `creates_per_hour`, `deletes_per_5_minutes`,
  `deletes_per_hour`, `group_limits`, `resource_groups`, `authorization_failed`,
  `platform_kill_rate`, `unknown_image`, `kill_grace_seconds`, `restart_backoff_seconds`,
  `operation_retry_after`. `POST /_emulator/reset` also forgets the create/delete history.

Python helpers: `localdev.aci_emulator.testing` (`start_emulator`, `Emulator`, `EmulatorCredential`,
`make_client`).
"""

from localdev.aci_emulator.model import API_VERSION

__all__ = ["API_VERSION"]
