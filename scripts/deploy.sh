#!/usr/bin/env bash
# Deploy Model Launcher: infrastructure (infra/main.bicep), then the Function App code.
# Run from anywhere; `scripts/deploy.sh --help` explains the arguments.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/deploy.sh -g RESOURCE_GROUP -l LOCATION -p NAME_PREFIX -i WORKER_IMAGE [options] [KEY=VALUE ...]

Creates the resource group, deploys infra/main.bicep (storage with the watched container,
Flex Consumption Function App, Application Insights, the containers' managed identity and
least-privilege role assignments), publishes the app, applies extra app settings and prints
the endpoints.

Required (flag or environment variable):
  -g, --resource-group NAME   RESOURCE_GROUP   resource group (created if missing)
  -l, --location REGION       LOCATION         Azure region (must offer Flex Consumption and ACI)
  -p, --prefix PREFIX         NAME_PREFIX      2-10 lowercase letters/digits for resource names
  -i, --image IMAGE           WORKER_IMAGE     worker image, e.g. myacr.azurecr.io/modellauncher/worker:latest

Options:
  --registry NAME|SERVER      REGISTRY                 ACR for private images (default: the image's
                                                       host when it is an ACR login server)
  --registry-group NAME       REGISTRY_RESOURCE_GROUP  the registry's resource group (default: -g)
  --network public|private    NETWORK                  default public (a quick trial); private builds
                                                       the locked-down deployment: VNet, private
                                                       endpoints, storage closed to the internet
                                                       (docs/deployment.md)
  --vnet-prefix CIDR          VNET_ADDRESS_PREFIX      private: the VNet's address space (/22 or
                                                       larger; default 10.70.0.0/16)
  --allow-ip IP[,IP...]       DATA_ALLOWED_IPS         private: public IPs or CIDR ranges that may
                                                       reach the data storage account (to drop
                                                       files from outside the VNet)
  --subnet-id ID              SUBNET_ID                public: delegated subnet for the container
                                                       groups (private mode creates its own)
  --poll-schedule CRON        POLL_SCHEDULE            default '0 */1 * * * *'
  --janitor-schedule CRON     JANITOR_SCHEDULE         default '30 */2 * * * *'
  --notify-queue NAME         NOTIFY_QUEUE             a storage queue in the data account that gets
                                                       a message per finished batch (created, with a
                                                       send-only role for the app; private mode adds
                                                       its private endpoint)
  --webhook-url URL           NOTIFY_WEBHOOK_URL       an https:// URL that gets a signed POST per
                                                       finished batch; its signing key is read from
                                                       the environment variable NOTIFY_WEBHOOK_SECRET
                                                       (at least 16 characters), never from an argument
  --job-profiles FILE         JOB_PROFILES_FILE        a JSON file of job profiles (docs/profiles.md),
                                                       checked here, deployed as JOB_PROFILES
  --skip-publish                                       deploy infrastructure and settings only
  --what-if                                            show what the deployment would change, then stop
  -h, --help

KEY=VALUE arguments are extra app settings (e.g. ACI_CPU=2 MAX_ATTEMPTS=3). They are passed to
the template (so redeployments keep them) and applied with `az functionapp config appsettings
set`. Settings the template owns (ACI_IMAGE, WATCH_CONTAINER, NOTIFY_*, JOB_PROFILES, ...) are
set with the flags above. Every deployment replaces all app settings: pass the notification and
profile flags (and NOTIFY_WEBHOOK_SECRET) again on each redeploy, or they are removed.

Needs: Azure CLI logged in (`az login`) with Owner or User Access Administrator + Contributor on
the resource group (the template creates role assignments and custom role definitions).
Publishes with Azure Functions Core Tools (`func`) when installed, else with a zip deployment.

Example:
  scripts/deploy.sh -g ml-rg -l westeurope -p mlaunch \
    -i myacr.azurecr.io/modellauncher/worker:latest ACI_CPU=2 JOB_TIMEOUT_MINUTES=120
EOF
}

die() {
  echo "error: $*" >&2
  exit 1
}

log() {
  printf '\n==> %s\n' "$*"
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEMPLATE="$REPO_ROOT/infra/main.bicep"
# What the Function App runs; tests, localdev, worker, node_modules and .venv stay behind.
APP_FILES=(function_app.py config.py settings_reader.py profiles.py host.json requirements.txt launcher cleanup)
# Names infra/main.bicep sets itself; extras may not override them.
TEMPLATE_SETTINGS=" FUNCTIONS_EXTENSION_VERSION AZUREWEBJOBSSTORAGE__ACCOUNTNAME
  APPLICATIONINSIGHTS_CONNECTION_STRING STORAGE_ACCOUNT_URL WATCH_CONTAINER POLL_SCHEDULE
  JANITOR_SCHEDULE AZURE_SUBSCRIPTION_ID ACI_RESOURCE_GROUP ACI_LOCATION ACI_IMAGE ACI_IDENTITY_ID
  ACI_IDENTITY_CLIENT_ID ACI_REGISTRY_SERVER ACI_SUBNET_ID NOTIFY_QUEUE NOTIFY_WEBHOOK_URL
  NOTIFY_WEBHOOK_SECRET JOB_PROFILES "

RESOURCE_GROUP="${RESOURCE_GROUP:-}"
LOCATION="${LOCATION:-}"
NAME_PREFIX="${NAME_PREFIX:-}"
WORKER_IMAGE="${WORKER_IMAGE:-}"
REGISTRY="${REGISTRY:-}"
REGISTRY_RESOURCE_GROUP="${REGISTRY_RESOURCE_GROUP:-}"
SUBNET_ID="${SUBNET_ID:-}"
NETWORK="${NETWORK:-public}"
VNET_ADDRESS_PREFIX="${VNET_ADDRESS_PREFIX:-10.70.0.0/16}"
DATA_ALLOWED_IPS="${DATA_ALLOWED_IPS:-}"
POLL_SCHEDULE="${POLL_SCHEDULE:-0 */1 * * * *}"
JANITOR_SCHEDULE="${JANITOR_SCHEDULE:-30 */2 * * * *}"
NOTIFY_QUEUE="${NOTIFY_QUEUE:-}"
NOTIFY_WEBHOOK_URL="${NOTIFY_WEBHOOK_URL:-}"
# The webhook's key comes from the environment only: an argument would be kept in the shell's
# history and shown to every user of the machine by ps.
NOTIFY_WEBHOOK_SECRET="${NOTIFY_WEBHOOK_SECRET:-}"
JOB_PROFILES_FILE="${JOB_PROFILES_FILE:-}"
SKIP_PUBLISH=false
WHAT_IF=false
EXTRA_SETTINGS=()

need_value() {
  [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    -g | --resource-group) need_value "$@"; RESOURCE_GROUP="$2"; shift 2 ;;
    -l | --location) need_value "$@"; LOCATION="$2"; shift 2 ;;
    -p | --prefix) need_value "$@"; NAME_PREFIX="$2"; shift 2 ;;
    -i | --image) need_value "$@"; WORKER_IMAGE="$2"; shift 2 ;;
    --registry) need_value "$@"; REGISTRY="$2"; shift 2 ;;
    --registry-group) need_value "$@"; REGISTRY_RESOURCE_GROUP="$2"; shift 2 ;;
    --subnet-id) need_value "$@"; SUBNET_ID="$2"; shift 2 ;;
    --network) need_value "$@"; NETWORK="$2"; shift 2 ;;
    --vnet-prefix) need_value "$@"; VNET_ADDRESS_PREFIX="$2"; shift 2 ;;
    --allow-ip) need_value "$@"; DATA_ALLOWED_IPS="${DATA_ALLOWED_IPS:+$DATA_ALLOWED_IPS,}$2"; shift 2 ;;
    --poll-schedule) need_value "$@"; POLL_SCHEDULE="$2"; shift 2 ;;
    --janitor-schedule) need_value "$@"; JANITOR_SCHEDULE="$2"; shift 2 ;;
    --notify-queue) need_value "$@"; NOTIFY_QUEUE="$2"; shift 2 ;;
    --webhook-url) need_value "$@"; NOTIFY_WEBHOOK_URL="$2"; shift 2 ;;
    --webhook-secret | --webhook-secret=*)
      die "pass the webhook's key in the environment variable NOTIFY_WEBHOOK_SECRET, not as an argument (shell history, ps)" ;;
    --job-profiles) need_value "$@"; JOB_PROFILES_FILE="$2"; shift 2 ;;
    --skip-publish) SKIP_PUBLISH=true; shift ;;
    --what-if) WHAT_IF=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *=*) EXTRA_SETTINGS+=("$1"); shift ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

missing=()
[[ -n "$RESOURCE_GROUP" ]] || missing+=("resource group (-g or RESOURCE_GROUP)")
[[ -n "$LOCATION" ]] || missing+=("location (-l or LOCATION)")
[[ -n "$NAME_PREFIX" ]] || missing+=("name prefix (-p or NAME_PREFIX)")
[[ -n "$WORKER_IMAGE" ]] || missing+=("worker image (-i or WORKER_IMAGE)")
if [[ ${#missing[@]} -gt 0 ]]; then
  usage >&2
  printf 'error: missing %s\n' "${missing[@]}" >&2
  exit 1
fi
[[ "$NAME_PREFIX" =~ ^[a-z][a-z0-9]{1,9}$ ]] \
  || die "name prefix '$NAME_PREFIX' must be 2-10 lowercase letters/digits, starting with a letter"
REGISTRY_RESOURCE_GROUP="${REGISTRY_RESOURCE_GROUP:-$RESOURCE_GROUP}"
[[ "$NETWORK" == public || "$NETWORK" == private ]] \
  || die "network must be 'public' or 'private', not '$NETWORK'"
if [[ "$NETWORK" == private ]]; then
  [[ -z "$SUBNET_ID" ]] || die "--subnet-id is for public mode: private mode creates the containers' subnet itself"
else
  [[ -z "$DATA_ALLOWED_IPS" ]] || die "--allow-ip applies to private mode (--network private)"
fi

# Completion notifications, checked as config.py checks NOTIFY_* (the app would refuse to start).
if [[ -n "$NOTIFY_QUEUE" ]]; then
  NOTIFY_QUEUE="$(printf '%s' "$NOTIFY_QUEUE" | tr '[:upper:]' '[:lower:]')" # as config.py does
  [[ "$NOTIFY_QUEUE" =~ ^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$ && "$NOTIFY_QUEUE" != *--* ]] \
    || die "--notify-queue '$NOTIFY_QUEUE' is not a valid queue name (3-63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit)"
fi
if [[ -n "$NOTIFY_WEBHOOK_URL" ]]; then
  [[ "$NOTIFY_WEBHOOK_URL" =~ ^https://[^/[:space:]]+ ]] \
    || die "--webhook-url must be an https:// URL"
  [[ -n "$NOTIFY_WEBHOOK_SECRET" ]] \
    || die "--webhook-url needs its signing key in the environment variable NOTIFY_WEBHOOK_SECRET"
  [[ ${#NOTIFY_WEBHOOK_SECRET} -ge 16 ]] \
    || die "NOTIFY_WEBHOOK_SECRET must be at least 16 characters"
  [[ "$NOTIFY_WEBHOOK_SECRET" != *[[:cntrl:]]* ]] \
    || die "NOTIFY_WEBHOOK_SECRET contains control characters"
elif [[ -n "$NOTIFY_WEBHOOK_SECRET" ]]; then
  die "NOTIFY_WEBHOOK_SECRET is set but --webhook-url (NOTIFY_WEBHOOK_URL) is not"
fi

# Job profiles: checked with the app's own parser (profiles.py, standard library only), so a bad
# field is named here rather than in the app's log after the deployment. Settings a profile
# names ("@SETTING") and its cap against MAX_ACTIVE_GROUPS are checked when the app starts.
profiles_json="{}"
if [[ -n "$JOB_PROFILES_FILE" ]]; then
  [[ -f "$JOB_PROFILES_FILE" && -r "$JOB_PROFILES_FILE" ]] \
    || die "--job-profiles: cannot read '$JOB_PROFILES_FILE'"
  command -v python3 >/dev/null 2>&1 || die "--job-profiles needs python3 to check the file"
  profiles_json="$(python3 - "$REPO_ROOT" "$JOB_PROFILES_FILE" <<'PY'
import json
import sys

sys.path.insert(0, sys.argv[1])
import profiles  # noqa: E402


class AnySetting(dict):
    def get(self, key, default=None):
        return "set in the app"


with open(sys.argv[2], encoding="utf-8") as f:
    raw = f.read()
problems = []
profiles.parse_profiles(raw, AnySetting(), 5000, problems)
if problems:
    print("error: --job-profiles " + sys.argv[2] + ": " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
print(json.dumps(json.loads(raw), separators=(",", ":")))
PY
  )" || exit 1
fi

# Allowed IPs as a JSON array. Storage firewall rules take a plain address for one IP and reject
# /31 and /32, so a /32 is written as the address.
allowed_ips_json="["
IFS=',' read -r -a allowed_ips <<<"$DATA_ALLOWED_IPS"
for ip in ${allowed_ips[@]+"${allowed_ips[@]}"}; do
  ip="${ip// /}"
  [[ -n "$ip" ]] || continue
  ip="${ip%/32}"
  [[ "$ip" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}(/([0-9]|[12][0-9]|30))?$ ]] \
    || die "--allow-ip '$ip' is not an IPv4 address or a CIDR range of /30 or wider"
  [[ "$allowed_ips_json" == "[" ]] || allowed_ips_json+=","
  allowed_ips_json+="\"$ip\""
done
allowed_ips_json+="]"

# Extra settings: validated names, JSON for the template (values escaped for JSON strings).
extra_json="{"
for pair in ${EXTRA_SETTINGS[@]+"${EXTRA_SETTINGS[@]}"}; do
  key="${pair%%=*}"
  value="${pair#*=}"
  [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "invalid app setting name in '$pair'"
  upper_key="$(printf '%s' "$key" | tr '[:lower:]' '[:upper:]')"
  [[ "$upper_key" != FUNCTIONS_WORKER_RUNTIME ]] \
    || die "Flex Consumption rejects FUNCTIONS_WORKER_RUNTIME: the runtime is set in the template"
  [[ "$upper_key" != NOTIFY_WEBHOOK_SECRET ]] \
    || die "pass NOTIFY_WEBHOOK_SECRET in the environment, not as an argument (shell history, ps)"
  [[ "$TEMPLATE_SETTINGS" != *" $upper_key "* ]] \
    || die "$key is set by the template: use the matching flag instead (see --help)"
  [[ "$value" != *[[:cntrl:]]* ]] || die "the value of $key contains control characters"
  value="${value//\\/\\\\}"
  value="${value//\"/\\\"}"
  [[ "$extra_json" == "{" ]] || extra_json+=","
  extra_json+="\"$key\":\"$value\""
done
extra_json+="}"

command -v az >/dev/null 2>&1 || die "the Azure CLI (az) is not installed"
[[ -f "$TEMPLATE" ]] || die "template not found: $TEMPLATE"
az account show --output none 2>/dev/null || die "not logged in: run 'az login' (and 'az account set -s <subscription>')"
subscription="$(az account show --query id --output tsv)"
echo "subscription $subscription, resource group $RESOURCE_GROUP in $LOCATION"

log "Registering resource providers (once per subscription)"
# Microsoft.App backs Flex Consumption; Microsoft.ContainerInstance is used by the app at run
# time, when its identity could not register it.
namespaces=(Microsoft.Web Microsoft.App Microsoft.ContainerInstance Microsoft.Storage
  Microsoft.Insights Microsoft.OperationalInsights Microsoft.ManagedIdentity)
[[ "$NETWORK" == public ]] || namespaces+=(Microsoft.Network)
for namespace in "${namespaces[@]}"; do
  state="$(az provider show --namespace "$namespace" --query registrationState --output tsv 2>/dev/null || true)"
  if [[ "$state" != "Registered" ]]; then
    echo "registering $namespace"
    az provider register --namespace "$namespace" --wait --output none
  fi
done

log "Resource group $RESOURCE_GROUP"
az group create --name "$RESOURCE_GROUP" --location "$LOCATION" --output none

deployment="model-launcher-$(date -u +%Y%m%d-%H%M%S)"
params=(
  "namePrefix=$NAME_PREFIX"
  "location=$LOCATION"
  "workerImage=$WORKER_IMAGE"
  "pollSchedule=$POLL_SCHEDULE"
  "janitorSchedule=$JANITOR_SCHEDULE"
  "registry=$REGISTRY"
  "registryResourceGroup=$REGISTRY_RESOURCE_GROUP"
  "subnetId=$SUBNET_ID"
  "network=$NETWORK"
  "vnetAddressPrefix=$VNET_ADDRESS_PREFIX"
  "dataAllowedIpRanges=$allowed_ips_json"
  "extraAppSettings=$extra_json"
  "notifyQueueName=$NOTIFY_QUEUE"
  "notifyWebhookUrl=$NOTIFY_WEBHOOK_URL"
  "jobProfiles=$profiles_json"
)
cleanup_paths=()
trap 'rm -rf "${cleanup_paths[@]+"${cleanup_paths[@]}"}"' EXIT
if [[ -n "$NOTIFY_WEBHOOK_SECRET" ]]; then
  # The secure parameter travels in a parameters file readable by this user only, deleted on
  # exit: never on az's command line (ps), never in a file that stays behind.
  secret_file="$(umask 077 && mktemp "${TMPDIR:-/tmp}/model-launcher-secret.XXXXXX")"
  cleanup_paths+=("$secret_file")
  secret="${NOTIFY_WEBHOOK_SECRET//\\/\\\\}"
  secret="${secret//\"/\\\"}"
  printf '{"$schema":"https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#","contentVersion":"1.0.0.0","parameters":{"notifyWebhookSecret":{"value":"%s"}}}\n' \
    "$secret" >"$secret_file"
  unset secret
  params+=("@$secret_file")
fi

if [[ "$WHAT_IF" == true ]]; then
  log "What-if for $TEMPLATE"
  az deployment group what-if --resource-group "$RESOURCE_GROUP" --name "$deployment" \
    --template-file "$TEMPLATE" --parameters "${params[@]}"
  exit 0
fi

log "Deploying $TEMPLATE ($deployment)"
deploy() {
  az deployment group create --resource-group "$RESOURCE_GROUP" --name "$deployment" \
    --template-file "$TEMPLATE" --parameters "${params[@]}" --output none
}
if ! deploy; then
  # A brand-new custom role or identity can take a minute to replicate before it can be
  # assigned; the template is idempotent, so one retry settles that case.
  echo "deployment failed; retrying once in 60 s (role and identity replication)" >&2
  sleep 60
  deploy
fi

output() {
  az deployment group show --resource-group "$RESOURCE_GROUP" --name "$deployment" \
    --query "properties.outputs.$1.value" --output tsv
}
app="$(output functionAppName)"
host="$(output functionAppHostName)"
storage="$(output storageAccountName)"
container="$(output containerName)"
identity_id="$(output containerIdentityId)"
identity_client_id="$(output containerIdentityClientId)"
identity_principal="$(output containerIdentityPrincipalId)"
function_principal="$(output functionPrincipalId)"
registry_server="$(output registryServer)"
registry_name="$(output registryName)"
acr_pull_pending="$(output acrPullPending)"
subnet_join_pending="$(output subnetJoinPending)"
subnet_join_role="$(output subnetJoinRoleId)"
[[ -n "$app" && -n "$host" ]] || die "deployment $deployment returned no outputs"

ensure_role() { # principal role scope description
  local count
  count="$(az role assignment list --assignee "$1" --role "$2" --scope "$3" \
    --query "length(@)" --output tsv)"
  if [[ "$count" == "0" ]]; then
    echo "granting $4"
    az role assignment create --assignee-object-id "$1" --assignee-principal-type ServicePrincipal \
      --role "$2" --scope "$3" --output none
  else
    echo "already granted: $4"
  fi
}

if [[ "$acr_pull_pending" == [Tt]rue ]]; then
  log "AcrPull on $registry_name (resource group $REGISTRY_RESOURCE_GROUP)"
  acr_id="$(az acr show --name "$registry_name" --resource-group "$REGISTRY_RESOURCE_GROUP" --query id --output tsv)"
  ensure_role "$identity_principal" AcrPull "$acr_id" "AcrPull to the containers' identity"
fi
if [[ "$subnet_join_pending" == [Tt]rue ]]; then
  log "Subnet join on $SUBNET_ID"
  ensure_role "$function_principal" "$subnet_join_role" "$SUBNET_ID" "subnet join to the Function App"
fi

if [[ ${#EXTRA_SETTINGS[@]} -gt 0 ]]; then
  log "Extra app settings"
  az functionapp config appsettings set --resource-group "$RESOURCE_GROUP" --name "$app" \
    --settings "${EXTRA_SETTINGS[@]}" --output none
  printf 'set %s\n' "${EXTRA_SETTINGS[@]%%=*}"
fi

if [[ "$SKIP_PUBLISH" == false ]]; then
  log "Publishing the app to $app"
  for item in "${APP_FILES[@]}"; do
    [[ -e "$REPO_ROOT/$item" ]] || die "missing $item in $REPO_ROOT: nothing complete to publish"
  done
  stage="$(mktemp -d)"
  cleanup_paths+=("$stage")
  for item in "${APP_FILES[@]}"; do
    cp -R "$REPO_ROOT/$item" "$stage/"
  done
  find "$stage" \( -name __pycache__ -o -name '*.pyc' -o -name .mypy_cache -o -name .pytest_cache \) \
    -prune -exec rm -rf {} +

  if command -v func >/dev/null 2>&1; then
    # Remote build installs requirements.txt on Linux for the app's Python version.
    (cd "$stage" && func azure functionapp publish "$app" --python --build remote)
  else
    echo "Azure Functions Core Tools not found: zip deployment with a remote build"
    zip_file="$stage.zip"
    cleanup_paths+=("$zip_file")
    if command -v zip >/dev/null 2>&1; then
      (cd "$stage" && zip -qr "$zip_file" .)
    else
      (cd "$stage" && python3 -m zipfile -c "$zip_file" "${APP_FILES[@]}")
    fi
    az functionapp deployment source config-zip --resource-group "$RESOURCE_GROUP" --name "$app" \
      --src "$zip_file" --build-remote true --output none
  fi
fi

log "Done"
cat <<EOF
Function App:        $app (https://$host)
Watched container:   $container in storage account $storage
  drop files under:  incoming/ (for example: az storage blob upload --auth-mode login \\
                       --account-name $storage -c $container -n incoming/my/file.txt -f my/file.txt)
Containers identity: $identity_id
                     client id $identity_client_id
Worker image:        $WORKER_IMAGE${registry_server:+ (registry $registry_server)}

Role assignments can take a few minutes to apply: the first timer ticks may log 403 errors.
EOF
if [[ "$NETWORK" == private ]]; then
  cat <<EOF

Network: private. Both storage accounts refuse public traffic; the app and the container groups
(subnet $(output containerSubnetId)) reach them through private endpoints.
Drop files from inside the VNet (VPN, peering, a VM)${DATA_ALLOWED_IPS:+ or from $DATA_ALLOWED_IPS};
see docs/deployment.md.
EOF
fi

if [[ "$SKIP_PUBLISH" == false ]]; then
  echo
  echo "HTTP (admin) endpoints of the app, function-level auth:"
  az functionapp function list --resource-group "$RESOURCE_GROUP" --name "$app" \
    --query "[?invokeUrlTemplate != null].{function: name, url: invokeUrlTemplate}" --output table \
    || echo "  (not listed yet: run 'az functionapp function list -g $RESOURCE_GROUP -n $app' in a minute)"
fi

cat <<EOF

Calling them (each needs a key, in the x-functions-key header or as ?code=):
  key=\$(az functionapp keys list -g $RESOURCE_GROUP -n $app --query functionKeys.default -o tsv)
  curl -X POST -H "x-functions-key: \$key" "https://$host/api/<route>"
Other keys:
  az functionapp keys list -g $RESOURCE_GROUP -n $app                  # host keys and the master key
  az functionapp function keys list -g $RESOURCE_GROUP -n $app --function-name <function name>
Run any function now, timers included (master key, the host's own admin API):
  curl -X POST -H "x-functions-key: <master key>" -H "Content-Type: application/json" \\
    -d '{}' "https://$host/admin/functions/<function name>"
EOF
