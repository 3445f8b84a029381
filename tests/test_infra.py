"""infra/ (main.bicep, network.bicep, azure.yaml) and the packaging files checked without Azure:
the app settings agree with config.py, the private network mode builds what it promises, and the
app package (.funcignore) holds everything the app imports."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import pathspec
import pytest

import config
import profiles
from config import ConfigError, load_settings
from tests.bicep_text import declarations, decorators, items, maybe_prop, prop, resources
from tests.conftest import REPO_ROOT

BICEP = (REPO_ROOT / "infra" / "main.bicep").read_text()
# Platform settings read by the Functions host, not by the app.
PLATFORM = {
    "FUNCTIONS_EXTENSION_VERSION",
    "AzureWebJobsStorage__accountName",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
}


def bicep_setting_names() -> set[str]:
    return set(re.findall(r"\{\s*name:\s*'([A-Za-z0-9_]+)'\s*,\s*value:", BICEP))


def known_setting_names() -> set[str]:
    return {
        v
        for k, v in vars(config).items()
        if k.isupper() and isinstance(v, str) and v.isupper() and "_" in v
    }


def test_every_app_setting_in_bicep_is_known_to_config() -> None:
    names = bicep_setting_names()
    assert {"STORAGE_ACCOUNT_URL", "WATCH_CONTAINER", "ACI_IMAGE"} <= names  # the parser found them
    unknown = names - known_setting_names() - PLATFORM
    assert unknown == set()


def test_bicep_sets_every_required_setting() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({})
    required = {
        name
        for name in known_setting_names()
        if any(p.startswith(name + " ") for p in info.value.problems)
    }
    assert required >= {
        "WATCH_CONTAINER",
        "AZURE_SUBSCRIPTION_ID",
        "ACI_RESOURCE_GROUP",
        "ACI_LOCATION",
        "ACI_IMAGE",
    }
    missing = required - bicep_setting_names() - {"STORAGE_CONNECTION_STRING"}  # bicep uses the URL
    assert missing == set()
    assert "STORAGE_ACCOUNT_URL" in bicep_setting_names()


def test_settings_as_bicep_sets_them_are_valid() -> None:
    sample = {
        "STORAGE_ACCOUNT_URL": "https://mlacct.blob.core.windows.net",
        "WATCH_CONTAINER": "watch",
        "POLL_SCHEDULE": "0 */1 * * * *",
        "JANITOR_SCHEDULE": "30 */2 * * * *",
        "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
        "ACI_RESOURCE_GROUP": "rg-ml",
        "ACI_LOCATION": "westeurope",
        "ACI_IMAGE": "mlacr.azurecr.io/modellauncher/worker:latest",
        "ACI_IDENTITY_ID": "/subscriptions/x/resourceGroups/rg-ml/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ml-containers",
        "ACI_IDENTITY_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
        "ACI_REGISTRY_SERVER": "mlacr.azurecr.io",
        "ACI_SUBNET_ID": "/subscriptions/x/resourceGroups/rg-ml/providers/Microsoft.Network/virtualNetworks/v/subnets/aci",
        "NOTIFY_QUEUE": "batches-finished",
        "NOTIFY_WEBHOOK_URL": "https://hooks.example.com/model-launcher",
        "NOTIFY_WEBHOOK_SECRET": "0123456789abcdef-from-a-secure-parameter",
        # string(jobProfiles): the parameter object's compact JSON.
        "JOB_PROFILES": '{"model-b":{"match":"b*","image":"mlacr.azurecr.io/model-b:1","cpu":2}}',
    }
    assert set(sample) == (bicep_setting_names() - PLATFORM)
    settings = load_settings(sample)
    assert settings.identity_id and settings.storage_account_url
    assert settings.queue_account_url == "https://mlacct.queue.core.windows.net"
    assert [p.name for p in settings.job_profiles] == ["model-b"]


def test_the_notification_queue_is_optional_and_the_app_may_only_send_to_it() -> None:
    queue, service = MAIN["notifyQueue"], MAIN["dataQueueService"]
    assert queue.condition == service.condition == "hasNotifyQueue"
    assert VARS["hasNotifyQueue"] == "!empty(notifyQueueName)"
    assert prop(service.body, "parent") == "dataStorage"  # the data account, not the host's
    assert prop(queue.body, "parent") == "dataQueueService"
    role = MAIN["appNotifyQueue"]
    assert role.condition == "hasNotifyQueue"
    assert prop(role.body, "scope") == "notifyQueue"  # this queue only
    assert "roles.storageQueueDataMessageSender" in prop(role.body, "roleDefinitionId")
    # The built-in "Storage Queue Data Message Sender": add messages, nothing else.
    assert "storageQueueDataMessageSender: 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'" in VARS["roles"]
    queue_roles = [
        r
        for r in MAIN.values()
        if r.type.endswith("roleAssignments") and "Queue" in prop(r.body, "roleDefinitionId")
    ]
    assert [r.name for r in queue_roles] == ["appNotifyQueue"]
    assert "@secure()" in decorators(BICEP, "notifyWebhookSecret")
    assert PARAMS["notifyQueueName"] == PARAMS["notifyWebhookUrl"] == "string = ''"
    assert "notifySettings" in prop(MAIN["functionApp"].body, "properties")


def test_job_profiles_and_the_webhook_are_parameters_that_become_app_settings() -> None:
    # Job profiles: an object parameter, written as its JSON text, absent when empty.
    assert PARAMS["jobProfiles"] == "object = {}"
    assert VARS["profileSettings"] == (
        "empty(jobProfiles) ? [] : [{ name: 'JOB_PROFILES', value: string(jobProfiles) }]"
    )
    # The webhook: URL and secret only together, and only when a URL is given.
    notify = VARS["notifySettings"]
    webhook = re.search(r"empty\(notifyWebhookUrl\) \? \[\] : (\[.*?\])\s*\)$", notify, re.S)
    assert webhook, notify
    assert re.findall(r"name: '(\w+)', value: (\w+)", webhook.group(1)) == [
        ("NOTIFY_WEBHOOK_URL", "notifyWebhookUrl"),
        ("NOTIFY_WEBHOOK_SECRET", "notifyWebhookSecret"),
    ]
    assert notify.count("notifyWebhookSecret") == 1
    settings = prop(MAIN["functionApp"].body, "appSettings")
    assert "notifySettings" in settings and "profileSettings" in settings
    # The secret: a secure parameter, in no variable but that one list, never in an output.
    assert "@secure()" in decorators(BICEP, "notifyWebhookSecret")
    assert "@secure()" not in decorators(BICEP, "jobProfiles")  # profiles name secrets, hold none
    assert [name for name, value in VARS.items() if "notifyWebhookSecret" in value] == [
        "notifySettings"
    ]
    outputs = [line for line in BICEP.splitlines() if line.startswith("output ")]
    assert not [line for line in outputs if "notifyWebhookSecret" in line or "Settings," in line]
    # Extras may not override them (the template filters those names)...
    for name in ("JOB_PROFILES", "NOTIFY_QUEUE", "NOTIFY_WEBHOOK_URL", "NOTIFY_WEBHOOK_SECRET"):
        assert f"'{name}'" in VARS["templateSettingNames"]


def test_deploy_script_refuses_as_extras_exactly_the_settings_the_template_owns() -> None:
    script = (REPO_ROOT / "scripts" / "deploy.sh").read_text()
    owned = re.search(r'^TEMPLATE_SETTINGS="([^"]*)"', script, re.M)
    assert owned
    in_template = set(re.findall(r"'(\w+)'", VARS["baseSettingNames"])) | set(
        re.findall(r"'(\w+)'", VARS["templateSettingNames"])
    )
    assert set(owned.group(1).split()) == {n.upper() for n in in_template}


def test_deploy_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(REPO_ROOT / "scripts" / "deploy.sh")], check=True)


# ---------------------------------------------------------------------------------------------
# Network modes (infra/main.bicep `network`, infra/network.bicep): static checks of the template
# text, since no Bicep compiler or Azure access is available here (see docs/deployment.md).
# ---------------------------------------------------------------------------------------------

NETWORK_BICEP = (REPO_ROOT / "infra" / "network.bicep").read_text()
MAIN = resources(BICEP)
NET = resources(NETWORK_BICEP)
VARS = declarations(BICEP, "var")
PARAMS = declarations(BICEP, "param")


def test_network_parameter_is_public_or_private_and_public_by_default() -> None:
    assert re.search(
        r"@allowed\(\[\s*'public'\s*,?\s*'private'\s*\]\)", decorators(BICEP, "network")
    )
    assert PARAMS["network"] == "string = 'public'"
    assert VARS["isPrivate"] == "network == 'private'"


@pytest.mark.parametrize("account", ["dataStorage", "hostStorage"])
def test_storage_accounts_close_their_public_endpoint_in_private_mode(account: str) -> None:
    body = MAIN[account].body
    access = VARS[prop(body, "publicNetworkAccess")]
    acls = prop(body, "networkAcls")
    assert VARS[prop(acls, "defaultAction")] == "isPrivate ? 'Deny' : 'Allow'"
    assert prop(acls, "bypass") == "'AzureServices'"
    if account == "hostStorage":
        # The Functions host's account (deployment package included) is never reachable from outside.
        assert access == "isPrivate ? 'Disabled' : 'Enabled'"
        assert "ipRules" not in acls
    else:
        # The data account opens its public endpoint only to dataAllowedIpRanges, only when given.
        assert access == "isPrivate && empty(dataAllowedIpRanges) ? 'Disabled' : 'Enabled'"
        rules = VARS[prop(acls, "ipRules")]
        assert re.fullmatch(
            r"\[for (\w+) in \(isPrivate \? dataAllowedIpRanges : \[\]\): \{ value: \1, action: 'Allow' \}\]",
            rules,
        ), rules
        assert PARAMS["dataAllowedIpRanges"] == "array = []"


def _endpoints(array_text: str) -> set[tuple[str, str]]:
    found = set()
    for item in items(array_text):
        account = re.search(r"storageId:\s*(\w+)\.id", item)
        group = re.search(r"group:\s*'(\w+)'", item)
        assert account and group, item
        found.add((account.group(1), group.group(1)))
    return found


def storage_endpoints(notify_queue: bool = False) -> set[tuple[str, str]]:
    """(account symbolic name, storage service) of each private endpoint main.bicep asks for,
    with or without a notification queue (`storageEndpoints` = the fixed list + the queue's)."""
    m = re.fullmatch(
        r"concat\(\s*(\[[^\]]*\]),\s*hasNotifyQueue \? (\[.*\]) : \[\]\s*\)",
        VARS["storageEndpoints"],
        re.S,
    )
    assert m, VARS["storageEndpoints"]
    return _endpoints(m.group(1)) | (_endpoints(m.group(2)) if notify_queue else set())


def test_private_endpoints_cover_every_storage_service_the_app_and_host_use() -> None:
    assert storage_endpoints() == {
        ("dataStorage", "blob"),
        ("hostStorage", "blob"),
        ("hostStorage", "table"),
    }
    # A notification queue lives in the data account: with public access disabled the app can
    # only reach it through a queue endpoint, which exists exactly when the queue does.
    assert storage_endpoints(notify_queue=True) == storage_endpoints() | {("dataStorage", "queue")}
    assert MAIN["notifyQueue"].condition == "hasNotifyQueue"
    assert "'data-queue'" in VARS["storageEndpoints"]
    # Every data-plane role the app holds on the host account has an endpoint for its service.
    service_of_role = {
        "storageBlobDataOwner": "blob",
        "storageTableDataContributor": "table",
        "storageQueueDataContributor": "queue",
    }
    for resource in MAIN.values():
        if (
            resource.type.endswith("roleAssignments")
            and maybe_prop(resource.body, "scope") == "hostStorage"
        ):
            role = re.search(r"roles\.(\w+)\)", prop(resource.body, "roleDefinitionId"))
            assert role, resource.name
            assert ("hostStorage", service_of_role[role.group(1)]) in storage_endpoints()


def test_every_data_role_of_the_app_on_the_data_account_has_an_endpoint_under_its_condition() -> (
    None
):
    """The app's queue role (send to the notification queue) comes with the queue endpoint."""
    in_data_account = {"watchContainer": "dataStorage", "notifyQueue": "dataStorage"}
    service_of_role = {
        "storageBlobDataContributor": "blob",
        "storageQueueDataMessageSender": "queue",
    }
    checked = 0
    for resource in MAIN.values():
        scope = maybe_prop(resource.body, "scope")
        if not resource.type.endswith("roleAssignments") or scope not in in_data_account:
            continue
        if "functionApp.identity" not in prop(resource.body, "principalId"):
            continue
        role = re.search(r"roles\.(\w+)\)", prop(resource.body, "roleDefinitionId"))
        assert role, resource.name
        endpoint = (in_data_account[scope], service_of_role[role.group(1)])
        assert endpoint in storage_endpoints(notify_queue=resource.condition == "hasNotifyQueue")
        checked += 1
    assert checked == 2  # the watched container and the notification queue


def test_private_network_module_is_deployed_only_in_private_mode_with_those_endpoints() -> None:
    module = MAIN["privateNetwork"]
    assert module.type == "network.bicep"
    assert module.condition == "isPrivate"
    params = prop(module.body, "params")
    assert prop(params, "storageEndpoints") == "storageEndpoints"
    assert prop(params, "addressPrefix") == "vnetAddressPrefix"
    for subnet in ("appSubnetName", "aciSubnetName", "endpointSubnetName"):
        assert prop(params, subnet) == subnet


def test_private_endpoints_and_dns_zones_are_built_per_storage_service() -> None:
    endpoints = NET["endpoints"]
    assert endpoints.type == "Microsoft.Network/privateEndpoints"
    assert endpoints.loop == "endpoint in storageEndpoints"
    connection = prop(endpoints.body, "privateLinkServiceConnections")
    assert prop(connection, "privateLinkServiceId") == "endpoint.storageId"
    assert prop(connection, "groupIds") == "[endpoint.group]"
    assert prop(endpoints.body, "subnet") == "{ id: '${vnet.id}/subnets/${endpointSubnetName}' }"

    zone_name = "'privatelink.${group}.${zoneSuffix}'"
    assert declarations(NETWORK_BICEP, "var")["zoneSuffix"] == "environment().suffixes.storage"
    zones = NET["zones"]
    assert zones.type == "Microsoft.Network/privateDnsZones"
    assert (zones.loop, prop(zones.body, "name"), prop(zones.body, "location")) == (
        "group in groups",
        zone_name,
        "'global'",
    )
    # One zone per service in use: blob and table, e.g. privatelink.blob.core.windows.net.
    assert declarations(NETWORK_BICEP, "var")["groups"] == (
        "union(map(storageEndpoints, endpoint => endpoint.group), [])"
    )
    # The names Azure's private endpoint DNS documentation gives the storage services' zones
    # (public cloud, storage suffix core.windows.net), queue included.
    documented = {
        "blob": "privatelink.blob.core.windows.net",
        "table": "privatelink.table.core.windows.net",
        "queue": "privatelink.queue.core.windows.net",
    }
    groups = {group for _, group in storage_endpoints(notify_queue=True)}
    assert groups == set(documented)
    for group in groups:
        rendered = zone_name.strip("'").replace("${group}", group)
        assert rendered.replace("${zoneSuffix}", "core.windows.net") == documented[group]
    links = NET["zoneLinks"]
    assert links.type == "Microsoft.Network/privateDnsZones/virtualNetworkLinks"
    assert prop(links.body, "parent") == "zones[i]"
    assert prop(links.body, "virtualNetwork") == "{ id: vnet.id }"
    assert prop(links.body, "registrationEnabled") == "false"

    dns = NET["endpointDns"]
    assert dns.type == "Microsoft.Network/privateEndpoints/privateDnsZoneGroups"
    assert dns.loop == "(endpoint, i) in storageEndpoints"
    assert prop(dns.body, "parent") == "endpoints[i]"
    assert prop(dns.body, "privateDnsZoneId") == (
        "resourceId('Microsoft.Network/privateDnsZones', 'privatelink.${endpoint.group}.${zoneSuffix}')"
    )


def subnet(name_param: str) -> str:
    for item in items(prop(NET["vnet"].body, "subnets")):
        if prop(item, "name") == name_param:
            return item
    raise AssertionError(f"no subnet {name_param}")


@pytest.mark.parametrize(
    ("name_param", "delegation", "index"),
    [
        ("appSubnetName", "'Microsoft.App/environments'", 0),
        ("aciSubnetName", "'Microsoft.ContainerInstance/containerGroups'", 1),
        ("endpointSubnetName", None, 2),
    ],
)
def test_subnets_are_delegated_to_their_service(
    name_param: str, delegation: str | None, index: int
) -> None:
    item = subnet(name_param)
    assert prop(item, "addressPrefix") == f"cidrSubnet(addressPrefix, 24, {index})"
    if delegation is None:
        assert "delegations" not in item
        assert prop(item, "privateEndpointNetworkPolicies") == "'Disabled'"
    else:
        assert prop(prop(item, "delegations"), "serviceName") == delegation
        assert prop(item, "defaultOutboundAccess") == "true"  # ARM, Entra ID, image pulls


def test_function_app_is_vnet_integrated_in_private_mode_after_the_network_exists() -> None:
    body = MAIN["functionApp"].body
    assert prop(body, "virtualNetworkSubnetId") == "isPrivate ? privateAppSubnetId : null"
    assert VARS["privateAppSubnetId"] == (
        "resourceId('Microsoft.Network/virtualNetworks/subnets', vnetName, appSubnetName)"
    )
    assert "privateNetwork" in prop(body, "dependsOn")
    # The deployment package path is unchanged: the host account's blob endpoint, which the
    # private DNS zone resolves to the private endpoint inside the VNet.
    storage = prop(prop(body, "deployment"), "storage")
    assert prop(storage, "value") == (
        "'${hostStorage.properties.primaryEndpoints.blob}${deploymentContainer.name}'"
    )


def test_container_groups_get_the_private_subnet_and_may_join_it() -> None:
    assert VARS["subnetSettings"] == (
        "hasSubnet ? [{ name: 'ACI_SUBNET_ID', value: aciSubnetId }] : []"
    )
    assert VARS["hasSubnet"].startswith("isPrivate ||")
    assert VARS["aciSubnetId"] == "isPrivate ? privateAciSubnetId : subnetId"
    assert VARS["privateAciSubnetId"] == (
        "resourceId('Microsoft.Network/virtualNetworks/subnets', vnetName, aciSubnetName)"
    )
    assert prop(MAIN["vnet"].body, "name") == "isPrivate ? vnetName : subnetParts[8]"
    assert prop(MAIN["subnet"].body, "name") == "isPrivate ? aciSubnetName : subnetParts[10]"
    assert VARS["subnetInThisGroup"].startswith("isPrivate ||")
    join = MAIN["appJoinsSubnet"]
    assert (join.condition, prop(join.body, "scope")) == ("subnetInThisGroup", "subnet")
    assert "privateNetwork" in prop(join.body, "dependsOn")
    # ACI_SUBNET_ID as the template writes it passes the app's own validation.
    settings = load_settings(
        {
            "STORAGE_ACCOUNT_URL": "https://mldata.blob.core.windows.net",
            "WATCH_CONTAINER": "watch",
            "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
            "ACI_RESOURCE_GROUP": "rg-ml",
            "ACI_LOCATION": "westeurope",
            "ACI_IMAGE": "mlacr.azurecr.io/modellauncher/worker:latest",
            "ACI_SUBNET_ID": "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-ml"
            "/providers/Microsoft.Network/virtualNetworks/ml-vnet-x/subnets/aci",
        }
    )
    assert settings.subnet_id and settings.subnet_id.endswith("/subnets/aci")


# ---------------------------------------------------------------------------------------------
# azd: azure.yaml, infra/main.parameters.json and the service tag
# ---------------------------------------------------------------------------------------------


def test_azure_yaml_deploys_this_folder_as_a_python_function_to_the_tagged_app() -> None:
    text = (REPO_ROOT / "azure.yaml").read_text()
    services = re.search(r"^services:\n((?:[ ]{2}.*\n?)+)", text, re.M)
    assert services, "azure.yaml has no services"
    names = re.findall(r"^  (\w[\w-]*):\s*$", services.group(1), re.M)
    assert len(names) == 1
    fields = dict(re.findall(r"^    (\w+):\s*(\S+)\s*$", services.group(1), re.M))
    assert fields == {"project": ".", "language": "python", "host": "function"}
    assert (
        prop(MAIN["functionApp"].body, "tags")
        == f"union(tags, {{ 'azd-service-name': '{names[0]}' }})"
    )
    infra = dict(re.findall(r"^  (provider|path|module):\s*(\S+)\s*$", text, re.M))
    assert infra == {"provider": "bicep", "path": "infra", "module": "main"}


def test_azd_parameters_name_real_parameters_and_give_every_required_one() -> None:
    parameters = json.loads((REPO_ROOT / "infra" / "main.parameters.json").read_text())[
        "parameters"
    ]
    assert set(parameters) <= set(PARAMS)
    required = {name for name, decl in PARAMS.items() if "=" not in decl}
    assert required == {"namePrefix", "workerImage"}
    assert required <= set(parameters)
    assert parameters["location"]["value"] == "${AZURE_LOCATION}"
    assert parameters["network"]["value"] == "${NETWORK=public}"
    assert parameters["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"
    # Notifications from the azd environment; empty (off) unless set.
    assert parameters["notifyQueueName"]["value"] == "${NOTIFY_QUEUE=}"
    assert parameters["notifyWebhookUrl"]["value"] == "${NOTIFY_WEBHOOK_URL=}"
    assert parameters["notifyWebhookSecret"]["value"] == "${NOTIFY_WEBHOOK_SECRET=}"
    assert "@secure()" in decorators(BICEP, "notifyWebhookSecret")
    assert MAIN["personWatchData"].condition == "!empty(principalId)"


def test_example_parameters_name_real_parameters_and_valid_profiles() -> None:
    example = json.loads((REPO_ROOT / "infra" / "main.parameters.example.json").read_text())
    parameters = example["parameters"]
    assert set(parameters) <= set(PARAMS)
    assert {"namePrefix", "workerImage"} <= set(parameters)
    # The secure parameter comes from a Key Vault reference, never as a plain value.
    assert set(parameters["notifyWebhookSecret"]) == {"reference"}
    problems: list[str] = []
    found = profiles.parse_profiles(
        json.dumps(parameters["jobProfiles"]["value"]), {}, 20, problems
    )
    assert problems == []
    assert [p.name for p in found] == ["model-a", "model-b"]


# ---------------------------------------------------------------------------------------------
# The app package: .funcignore keeps the environments out and everything the app imports in
# ---------------------------------------------------------------------------------------------


def app_files() -> set[str]:
    """Repository files function_app.py needs at run time: the modules it imports, transitively
    (packages' __init__.py included), plus the host's own files."""
    needed = {"function_app.py", "host.json", "requirements.txt"}
    todo = ["function_app.py"]
    while todo:
        tree = ast.parse((REPO_ROOT / todo.pop()).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for module in modules:
                parts = module.split(".")
                for depth in range(1, len(parts) + 1):
                    base = "/".join(parts[:depth])
                    for candidate in (f"{base}.py", f"{base}/__init__.py"):
                        if (REPO_ROOT / candidate).is_file() and candidate not in needed:
                            needed.add(candidate)
                            todo.append(candidate)
    return needed


def test_funcignore_keeps_environments_out_and_every_imported_module_in() -> None:
    spec = pathspec.GitIgnoreSpec.from_lines((REPO_ROOT / ".funcignore").read_text().splitlines())
    needed = app_files()
    # The walk found the app's real dependencies (or this test would prove nothing).
    assert {"config.py", "launcher/poll.py", "launcher/aci.py", "cleanup/sweep.py"} <= needed
    assert {"launcher/__init__.py", "cleanup/__init__.py", "cleanup/admin.py"} <= needed
    excluded = sorted(path for path in needed if spec.match_file(path))
    assert excluded == []
    for path in (
        ".venv",  # a symlink in worktrees: matched as a file too
        ".venv/bin/python",
        "node_modules/azurite/package.json",
        ".localdev/azurite/__blobstorage__/x",
        "local.settings.json",
        "tests/test_infra.py",
        "localdev/host/cli.py",
        "worker/run.py",
        "infra/main.bicep",
        "launcher/__pycache__/poll.cpython-311.pyc",
    ):
        assert spec.match_file(path), path


def test_deploy_script_stages_every_imported_module() -> None:
    script = (REPO_ROOT / "scripts" / "deploy.sh").read_text()
    staged = re.search(r"^APP_FILES=\(([^)]*)\)", script, re.M)
    assert staged
    roots = staged.group(1).split()
    missing = sorted(p for p in app_files() if p not in roots and p.split("/")[0] not in roots)
    assert missing == []


# ---------------------------------------------------------------------------------------------
# scripts/deploy.sh: the network flags are checked before anything touches Azure
# ---------------------------------------------------------------------------------------------


def run_deploy(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = ["-g", "rg-ml", "-l", "westeurope", "-p", "mlaunch", "-i", "img:latest"]
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "deploy.sh"), *base, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **env},
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--network", "hybrid"], "network must be 'public' or 'private'"),
        (
            ["--network", "private", "--subnet-id", "/x/subnets/aci"],
            "--subnet-id is for public mode",
        ),
        (["--allow-ip", "203.0.113.10"], "--allow-ip applies to private mode"),
        (["--network", "private", "--allow-ip", "203.0.113.0/31"], "is not an IPv4 address"),
        (["--network", "private", "--allow-ip", "10.0.0.1,bad"], "'bad' is not an IPv4 address"),
    ],
)
def test_deploy_script_rejects_inconsistent_network_flags(args: list[str], message: str) -> None:
    result = run_deploy(*args)
    assert result.returncode == 1
    assert message in result.stderr


@pytest.mark.skipif(shutil.which("az", path="/usr/bin:/bin") is not None, reason="az is installed")
def test_deploy_script_accepts_private_mode_flags() -> None:
    result = run_deploy("--network", "private", "--allow-ip", "203.0.113.10/32,198.51.100.0/24")
    # Validation passed: the first thing that failed is the missing Azure CLI.
    assert result.returncode == 1
    assert result.stderr.strip() == "error: the Azure CLI (az) is not installed"


def test_deployment_doc_lists_the_api_versions_the_templates_use() -> None:
    doc = (REPO_ROOT / "docs" / "deployment.md").read_text()
    documented = set()
    for row in re.findall(r"^\| (`Microsoft\..*?) \| (\d{4}-\d{2}-\d{2}) \|$", doc, re.M):
        names = re.findall(r"`([\w./]+)`", row[0])
        namespace = names[0].split("/")[0]
        for name in names:
            full = name if name.startswith("Microsoft.") else f"{namespace}/{name}"
            documented.add((full, row[1]))
    used = {
        (resource.type, resource.api_version)
        for resource in [*MAIN.values(), *NET.values()]
        if resource.api_version  # modules have none
    }
    assert len(used) >= 15
    assert documented == used


# ---------------------------------------------------------------------------------------------
# scripts/deploy.sh: notification and job profile flags, checked before anything touches Azure
# ---------------------------------------------------------------------------------------------

SECRET = "0123456789abcdef-webhook-key"
HOOK = "https://hooks.example.com/model-launcher"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--notify-queue", "Batches_Done"], {}, "is not a valid queue name"),
        (["--notify-queue", "a--b"], {}, "is not a valid queue name"),
        (
            ["--webhook-url", "http://hooks.example.com"],
            {"NOTIFY_WEBHOOK_SECRET": SECRET},
            "https://",
        ),
        (["--webhook-url", HOOK], {}, "environment variable NOTIFY_WEBHOOK_SECRET"),
        (["--webhook-url", HOOK], {"NOTIFY_WEBHOOK_SECRET": "short"}, "at least 16 characters"),
        ([], {"NOTIFY_WEBHOOK_SECRET": SECRET}, "--webhook-url (NOTIFY_WEBHOOK_URL) is not"),
        # The key never travels as an argument, in either form.
        (["--webhook-url", HOOK, "--webhook-secret", SECRET], {}, "not as an argument"),
        ([f"NOTIFY_WEBHOOK_SECRET={SECRET}"], {}, "not as an argument"),
        (["JOB_PROFILES={}"], {}, "JOB_PROFILES is set by the template"),
        (["--job-profiles", "/nonexistent/profiles.json"], {}, "cannot read"),
    ],
)
def test_deploy_script_rejects_bad_notification_and_profile_flags(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = run_deploy(*args, **env)
    assert result.returncode == 1
    assert message in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_deploy_script_checks_job_profiles_with_the_apps_parser(tmp_path: Path) -> None:
    bad = tmp_path / "profiles.json"
    bad.write_text(json.dumps({"model-a": {"match": "a*", "image": "a:1", "cpu": "lots"}}))
    result = run_deploy("--job-profiles", str(bad))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: --job-profiles {bad}: JOB_PROFILES.model-a.cpu")
    assert result.stderr.count("\n") == 1
    bad.write_text("{not json")
    assert "JOB_PROFILES is not valid JSON" in run_deploy("--job-profiles", str(bad)).stderr


@pytest.mark.skipif(shutil.which("az", path="/usr/bin:/bin") is not None, reason="az is installed")
def test_deploy_script_accepts_notification_and_profile_flags(tmp_path: Path) -> None:
    good = tmp_path / "profiles.json"
    profile = {"match": ["b", "b-*"], "image": "b:1", "secure_env": {"TOKEN": "@MODEL_B_TOKEN"}}
    good.write_text(json.dumps({"model-b": profile}, indent=2))
    result = run_deploy(
        "--notify-queue",
        "batches-finished",
        "--webhook-url",
        HOOK,
        "--job-profiles",
        str(good),
        NOTIFY_WEBHOOK_SECRET=SECRET,
    )
    # Validation passed (settings a profile names are the app's to check): the first thing that
    # failed is the missing Azure CLI.
    assert result.returncode == 1
    assert result.stderr.strip() == "error: the Azure CLI (az) is not installed"


FAKE_AZ = """#!/bin/bash
# Stands in for the Azure CLI: records each call's arguments (one per line) and the parameter
# files it is given, as they are at the time of the call.
log="$AZ_LOG_DIR/calls"
printf '%s\\n' "$@" "----" >>"$log"
for arg in "$@"; do
  if [[ "$arg" == @* ]]; then
    cp "${arg#@}" "$AZ_LOG_DIR/params.json"
    stat -c %a "${arg#@}" >"$AZ_LOG_DIR/params.mode"
  fi
done
case "$1 $2" in
  "account show") [[ "$*" == *"--query id"* ]] && echo 00000000-0000-0000-0000-000000000001 ;;
  "provider show") echo Registered ;;
esac
exit 0
"""


def test_deploy_script_passes_the_webhook_key_in_a_private_file_never_as_an_argument(
    tmp_path: Path,
) -> None:
    bin_dir, log_dir = tmp_path / "bin", tmp_path / "az"
    bin_dir.mkdir()
    log_dir.mkdir()
    (bin_dir / "az").write_text(FAKE_AZ)
    (bin_dir / "az").chmod(0o755)
    profiles = tmp_path / "profiles.json"
    profiles.write_text(json.dumps({"model-b": {"match": "b*", "image": "b:1"}}, indent=2))
    secret = 'k3y-with-"quotes"-and-\\-backslash'
    flags = ["--network", "private", "--what-if", "--notify-queue", "batches-finished"]
    flags += ["--webhook-url", HOOK, "--job-profiles", str(profiles)]
    required = ["-g", "rg-ml", "-l", "westeurope", "-p", "mlaunch", "-i", "img:latest"]
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "deploy.sh"), *required, *flags],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": "/nonexistent",
            "TMPDIR": str(tmp_path),
            "AZ_LOG_DIR": str(log_dir),
            "NOTIFY_WEBHOOK_SECRET": secret,
        },
    )
    assert result.returncode == 0, result.stderr
    calls = (log_dir / "calls").read_text()
    assert secret not in calls and "0123456789" not in calls  # no argument carries the key
    what_if = [c for c in calls.split("----\n") if c.startswith("deployment\ngroup\nwhat-if")]
    assert len(what_if) == 1
    args = what_if[0].splitlines()
    assert "notifyQueueName=batches-finished" in args
    assert f"notifyWebhookUrl={HOOK}" in args
    assert 'jobProfiles={"model-b":{"match":"b*","image":"b:1"}}' in args
    [secret_arg] = [a for a in args if a.startswith("@")]
    parameters = json.loads((log_dir / "params.json").read_text())["parameters"]
    assert parameters == {"notifyWebhookSecret": {"value": secret}}
    # The file was readable by its owner only, and is gone once the script is done.
    assert (log_dir / "params.mode").read_text().strip() == "600"
    assert not Path(secret_arg[1:]).exists()
    assert not list(tmp_path.glob("model-launcher-secret.*"))
