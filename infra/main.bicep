// Model Launcher: Function App (Flex Consumption, Python 3.11) that turns the blob container
// `watch` into a batch queue and launches one Azure Container Instances group per batch.
// Deploy with scripts/deploy.sh, `azd up` (azure.yaml) or az deployment group create -g <rg>
// -f infra/main.bicep -p ...; docs/deployment.md explains both network modes.
//
// Design decisions
// - Hosting: Flex Consumption (FC1). It is the Linux serverless plan that supports keyless storage
//   end to end: identity-based AzureWebJobsStorage AND identity-based code deployment (a blob
//   container read with the app's identity). Linux Consumption (Y1) can't deploy code with
//   `func publish`/`config-zip` when the storage account allows no shared key, and is retiring
//   in 2028. Flex declares the worker runtime in functionAppConfig.runtime (python 3.11) and
//   rejects a FUNCTIONS_WORKER_RUNTIME app setting, so that one is deliberately not set;
//   FUNCTIONS_EXTENSION_VERSION=~4 is accepted (the platform manages it on Flex).
// - Two storage accounts, both without shared keys: `data` holds the watched container, `host`
//   holds the Functions host state (timer locks, keys, deployment package). Separate accounts let
//   the app's data access be scoped to one container: the host needs Storage Blob Data Owner on
//   its whole account, which on a shared account would cover the watched data too.
// - Least privilege for ARM: a custom role with Microsoft.ContainerInstance/containerGroups/* on
//   this resource group (not Contributor), Managed Identity Operator on the containers' identity
//   only (to attach it to groups), and a subnet-join role on the given subnet only.
// - Containers authenticate as a user-assigned identity (ACI_IDENTITY_ID), so the app never has
//   to mint a SAS (that would need Storage Blob Delegator at account scope).
// - Network: `public` (default, a quick trial) leaves both storage accounts reachable from the
//   internet, with keyless access only. `private` is the deployment the product exists for (it
//   polls because storage behind private endpoints cannot use Event Grid): network.bicep builds a
//   VNet, the app gets VNet integration, the container groups a delegated subnet, each storage
//   account private endpoints and private DNS zones, and both accounts refuse public traffic.
//   Code deployment keeps working: Flex Consumption's deployment endpoint (/api/publish on the
//   app's scm site, used by azd, Core Tools and az) writes the package to the deployment container
//   with the app's identity through the app's VNet integration, the path the official Flex
//   Consumption samples rely on with public network access disabled.

targetScope = 'resourceGroup'

@description('Azure region for every resource, including the container groups (ACI_LOCATION). The region must offer Flex Consumption and Container Instances.')
param location string = resourceGroup().location

@description('Short lowercase prefix for resource names: 2-10 letters or digits (hyphens are dropped for storage accounts).')
@minLength(2)
@maxLength(10)
param namePrefix string

@description('Worker image that processes a batch (ACI_IMAGE), e.g. myacr.azurecr.io/modellauncher/worker:latest.')
@minLength(1)
param workerImage string

@description('NCRONTAB (6 fields, with seconds) for the poll/launch timer (POLL_SCHEDULE).')
param pollSchedule string = '0 */1 * * * *'

@description('NCRONTAB (6 fields, with seconds) for the janitor timer (JANITOR_SCHEDULE).')
param janitorSchedule string = '30 */2 * * * *'

@description('public: storage reachable from the internet (keyless; a quick trial). private: a VNet, Flex Consumption VNet integration, the container groups in a delegated subnet, private endpoints and private DNS zones for both storage accounts, public network access disabled. See docs/deployment.md.')
@allowed(['public', 'private'])
param network string = 'public'

@description('private network only: address space of the VNet the template creates, a /22 or larger (subnets app, aci and private-endpoints are its first three /24s).')
param vnetAddressPrefix string = '10.70.0.0/16'

@description('private network only: public IPv4 addresses (1.2.3.4) or ranges (CIDR, /30 or wider) allowed to reach the data storage account from outside the VNet, e.g. to drop files from an office. Empty: the data account is reachable through its private endpoint only. The host account is never reachable from outside.')
param dataAllowedIpRanges array = []

@description('public network only: optional subnet resource ID for the container groups (ACI_SUBNET_ID). The subnet must be delegated to Microsoft.ContainerInstance/containerGroups. Empty: groups get no VNet. Ignored in private mode, where the template creates the subnet.')
param subnetId string = ''

@description('Optional object ID of a user or group that may drop files and read results: Storage Blob Data Contributor on the watched container (azd passes the signed-in user).')
param principalId string = ''

@description('Optional Azure Container Registry for private worker images: registry name (myacr) or login server (myacr.azurecr.io). Empty: taken from workerImage when its host is an ACR login server.')
param registry string = ''

@description('Resource group of the registry when it is not this one. The template then cannot grant AcrPull itself; scripts/deploy.sh does (output acrPullPending).')
param registryResourceGroup string = resourceGroup().name

@description('Name of the blob container that users drop files into (WATCH_CONTAINER).')
@minLength(3)
@maxLength(63)
param watchContainerName string = 'watch'

@description('Flex Consumption scale-out limit for the app.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Flex Consumption instance memory size in MB.')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

@description('Extra app settings (name: value), e.g. {"ACI_CPU": "2", "MAX_ATTEMPTS": "3"}; names the template sets itself are ignored (use the parameters). Each deployment replaces all app settings: settings added later with the CLI must be passed again (scripts/deploy.sh does) or put here.')
param extraAppSettings object = {}

@description('Optional: a storage queue in the data account that gets a message per finished batch (NOTIFY_QUEUE, docs/notifications.md); the app may only send to it (Storage Queue Data Message Sender on this queue). Empty: no queue.')
param notifyQueueName string = ''

@description('Optional HTTPS webhook that gets a signed POST per finished batch (NOTIFY_WEBHOOK_URL). Empty: none.')
param notifyWebhookUrl string = ''

@secure()
@description('HMAC-SHA256 key of the webhook signature (NOTIFY_WEBHOOK_SECRET, at least 16 characters); required with notifyWebhookUrl, ignored without it. Secure: never shown in the deployment history or outputs.')
param notifyWebhookSecret string = ''

@description('Optional job profiles (JOB_PROFILES, docs/profiles.md): profile name -> profile, e.g. {"model-a": {"match": "a*", "image": "myacr.azurecr.io/model-a:1"}}. Written to the app setting as JSON; config.py validates it when the app starts. Empty: no JOB_PROFILES setting (the ACI_* settings are the only profile). Secrets do not belong here: profiles name other app settings ("@SETTING").')
param jobProfiles object = {}

@description('Tags for every resource.')
param tags object = {}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

var prefix = toLower(namePrefix)
var compactPrefix = replace(prefix, '-', '')
var token = uniqueString(resourceGroup().id, prefix)
var dataStorageName = take('${compactPrefix}data${token}', 24)
var hostStorageName = take('${compactPrefix}host${token}', 24)
var functionAppName = '${prefix}-func-${token}'
var planName = '${prefix}-plan-${token}'
var workspaceName = '${prefix}-logs-${token}'
var appInsightsName = '${prefix}-appi-${token}'
var containerIdentityName = '${prefix}-aci-${token}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(token, 7)}'
var blobSuffix = 'blob.${environment().suffixes.storage}'
var vnetName = '${prefix}-vnet-${token}'

// Registry: explicit parameter, else the worker image's host when it is an ACR login server.
var acrSuffix = environment().suffixes.acrLoginServer // '.azurecr.io' in the public cloud
var imageHost = toLower(first(split(workerImage, '/')))
var imageRegistry = contains(imageHost, '.') && endsWith(imageHost, acrSuffix) ? imageHost : ''
var registryInput = toLower(empty(registry) ? imageRegistry : registry)
var hasRegistry = !empty(registryInput)
var registryName = hasRegistry ? first(split(registryInput, '.')) : ''
var registryHost = contains(registryInput, '.') ? registryInput : '${registryInput}${acrSuffix}'
var registryServer = hasRegistry ? registryHost : ''
var registryInThisGroup = toLower(registryResourceGroup) == toLower(resourceGroup().name)

// Network mode. In private mode the template owns the VNet and both delegated subnets.
var isPrivate = network == 'private'
var appSubnetName = 'app'
var aciSubnetName = 'aci'
var endpointSubnetName = 'private-endpoints'
var privateAciSubnetId = resourceId('Microsoft.Network/virtualNetworks/subnets', vnetName, aciSubnetName)
var privateAppSubnetId = resourceId('Microsoft.Network/virtualNetworks/subnets', vnetName, appSubnetName)

// What the storage accounts let in. Private: public network access disabled and deny by default;
// only the data account can open its public endpoint, and then only to dataAllowedIpRanges.
var hostPublicNetworkAccess = isPrivate ? 'Disabled' : 'Enabled'
var dataPublicNetworkAccess = isPrivate && empty(dataAllowedIpRanges) ? 'Disabled' : 'Enabled'
var networkDefaultAction = isPrivate ? 'Deny' : 'Allow'
var dataIpRules = [for range in (isPrivate ? dataAllowedIpRanges : []): { value: range, action: 'Allow' }]

// Private endpoints, one per account and storage service in use: the watched data is blob, plus
// queue when the app sends completion notifications to a queue in that account (NOTIFY_QUEUE);
// the Functions host keeps timer locks, keys and the deployment package in blobs and diagnostic
// events in tables. Timer and HTTP triggers use no host queues (add one with a queue trigger).
// network.bicep creates one private DNS zone per group (privatelink.<group>.<storage suffix>).
var storageEndpoints = concat(
  [
    { name: 'data-blob', storageId: dataStorage.id, group: 'blob' }
    { name: 'host-blob', storageId: hostStorage.id, group: 'blob' }
    { name: 'host-table', storageId: hostStorage.id, group: 'table' }
  ],
  hasNotifyQueue ? [{ name: 'data-queue', storageId: dataStorage.id, group: 'queue' }] : []
)

// Container groups' subnet (ACI_SUBNET_ID): the template's own in private mode, else the optional
// subnetId. A given subnet looks like
// /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Network/virtualNetworks/<vnet>/subnets/<name>
var hasExternalSubnet = !isPrivate && !empty(subnetId)
var hasSubnet = isPrivate || hasExternalSubnet
var aciSubnetId = isPrivate ? privateAciSubnetId : subnetId
var subnetPlaceholder = '/subscriptions/-/resourceGroups/-/providers/Microsoft.Network/virtualNetworks/-/subnets/-'
var subnetParts = split(hasExternalSubnet ? subnetId : subnetPlaceholder, '/')
var subnetGroupId = '/subscriptions/${subnetParts[2]}/resourceGroups/${subnetParts[4]}'
var subnetInThisGroup = isPrivate || (hasExternalSubnet && toLower(subnetGroupId) == toLower(resourceGroup().id))

// Built-in role definition IDs (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var roles = {
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  storageQueueDataMessageSender: 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
  managedIdentityOperator: 'f1a07417-d97a-45cb-824c-7a7467783830'
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d'
}

// ---------------------------------------------------------------------------------------------
// Storage: the watched data and the Functions host state, both keyless
// ---------------------------------------------------------------------------------------------

resource dataStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: dataStorageName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    // Public mode: container groups without a subnet reach it over the internet.
    publicNetworkAccess: dataPublicNetworkAccess
    networkAcls: {
      defaultAction: networkDefaultAction
      bypass: 'AzureServices'
      ipRules: dataIpRules
    }
  }
}

resource dataBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: dataStorage
  name: 'default'
}

resource watchContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: dataBlobService
  name: watchContainerName
  properties: { publicAccess: 'None' }
}

// Completion notifications (optional): one queue in the data account.
var hasNotifyQueue = !empty(notifyQueueName)

resource dataQueueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = if (hasNotifyQueue) {
  parent: dataStorage
  name: 'default'
}

resource notifyQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = if (hasNotifyQueue) {
  parent: dataQueueService
  name: hasNotifyQueue ? notifyQueueName : 'unused'
}

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: hostStorageName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: hostPublicNetworkAccess
    networkAcls: {
      defaultAction: networkDefaultAction
      bypass: 'AzureServices'
    }
  }
}

resource hostBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: hostStorage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: hostBlobService
  name: deploymentContainerName
  properties: { publicAccess: 'None' }
}

// ---------------------------------------------------------------------------------------------
// Private network (network: 'private'): VNet, subnets, private DNS zones, private endpoints
// ---------------------------------------------------------------------------------------------

module privateNetwork 'network.bicep' = if (isPrivate) {
  name: 'model-launcher-network-${take(token, 6)}'
  params: {
    location: location
    tags: tags
    vnetName: vnetName
    addressPrefix: vnetAddressPrefix
    appSubnetName: appSubnetName
    aciSubnetName: aciSubnetName
    endpointSubnetName: endpointSubnetName
    storageEndpoints: storageEndpoints
  }
}

// ---------------------------------------------------------------------------------------------
// Monitoring
// ---------------------------------------------------------------------------------------------

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: workspaceName
  location: location
  tags: tags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
  }
}

// ---------------------------------------------------------------------------------------------
// Identity of the container groups
// ---------------------------------------------------------------------------------------------

resource containerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: containerIdentityName
  location: location
  tags: tags
}

// ---------------------------------------------------------------------------------------------
// Function App
// ---------------------------------------------------------------------------------------------

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: { tier: 'FlexConsumption', name: 'FC1' }
  properties: { reserved: true }
}

// App settings, as a literal list rather than a loop over an object because several values only
// exist once the resources above do. Extras whose name the template sets itself are ignored.
var baseSettingNames = [
  'FUNCTIONS_EXTENSION_VERSION'
  'AzureWebJobsStorage__accountName'
  'APPLICATIONINSIGHTS_CONNECTION_STRING'
  'STORAGE_ACCOUNT_URL'
  'WATCH_CONTAINER'
  'POLL_SCHEDULE'
  'JANITOR_SCHEDULE'
  'AZURE_SUBSCRIPTION_ID'
  'ACI_RESOURCE_GROUP'
  'ACI_LOCATION'
  'ACI_IMAGE'
  'ACI_IDENTITY_ID'
  'ACI_IDENTITY_CLIENT_ID'
]
var templateSettingNames = map(concat(baseSettingNames, ['ACI_REGISTRY_SERVER', 'ACI_SUBNET_ID', 'NOTIFY_QUEUE', 'NOTIFY_WEBHOOK_URL', 'NOTIFY_WEBHOOK_SECRET', 'JOB_PROFILES']), n => toLower(n))
var extraSettings = [for item in items(extraAppSettings): { name: item.key, value: string(item.value) }]
var extraSettingsKept = filter(extraSettings, setting => !contains(templateSettingNames, toLower(setting.name)))

var baseSettings = [
  // Runtime major version (on Flex the platform manages it; ~4 is the only valid value).
  { name: 'FUNCTIONS_EXTENSION_VERSION', value: '~4' }
  // Host storage through the app's system-assigned identity: no connection string, no key.
  { name: 'AzureWebJobsStorage__accountName', value: hostStorage.name }
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsights.properties.ConnectionString }
  // The app's own contract (config.py).
  { name: 'STORAGE_ACCOUNT_URL', value: 'https://${dataStorage.name}.${blobSuffix}' }
  { name: 'WATCH_CONTAINER', value: watchContainer.name }
  { name: 'POLL_SCHEDULE', value: pollSchedule }
  { name: 'JANITOR_SCHEDULE', value: janitorSchedule }
  { name: 'AZURE_SUBSCRIPTION_ID', value: subscription().subscriptionId }
  { name: 'ACI_RESOURCE_GROUP', value: resourceGroup().name }
  { name: 'ACI_LOCATION', value: location }
  { name: 'ACI_IMAGE', value: workerImage }
  { name: 'ACI_IDENTITY_ID', value: containerIdentity.id }
  { name: 'ACI_IDENTITY_CLIENT_ID', value: containerIdentity.properties.clientId }
]
var registrySettings = hasRegistry ? [{ name: 'ACI_REGISTRY_SERVER', value: registryServer }] : []
var subnetSettings = hasSubnet ? [{ name: 'ACI_SUBNET_ID', value: aciSubnetId }] : []
var notifySettings = concat(
  hasNotifyQueue ? [{ name: 'NOTIFY_QUEUE', value: notifyQueueName }] : [],
  empty(notifyWebhookUrl) ? [] : [
    { name: 'NOTIFY_WEBHOOK_URL', value: notifyWebhookUrl }
    { name: 'NOTIFY_WEBHOOK_SECRET', value: notifyWebhookSecret }
  ]
)
// string() of an object is its JSON text, the form config.py reads.
var profileSettings = empty(jobProfiles) ? [] : [{ name: 'JOB_PROFILES', value: string(jobProfiles) }]

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  // azd deploys the `app` service of azure.yaml to the site carrying this tag.
  tags: union(tags, { 'azd-service-name': 'app' })
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Private mode: outbound traffic through the VNet, where the storage host names resolve to the
    // private endpoints. Null leaves the property out (public mode).
    virtualNetworkSubnetId: isPrivate ? privateAppSubnetId : null
    siteConfig: {
      appSettings: concat(baseSettings, registrySettings, subnetSettings, notifySettings, profileSettings, extraSettingsKept)
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostStorage.properties.primaryEndpoints.blob}${deploymentContainer.name}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
  // The host starts as soon as the site exists: in private mode the subnet, the endpoints and
  // their DNS records must be there first, or its first storage calls go to refused public IPs.
  dependsOn: [privateNetwork]
}

// ---------------------------------------------------------------------------------------------
// Custom roles: only what launching and cleaning up container groups needs
// ---------------------------------------------------------------------------------------------

resource aciOperatorRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'model-launcher-aci-operator')
  properties: {
    roleName: 'Model Launcher container groups operator (${resourceGroup().name}, ${take(token, 6)})'
    description: 'Create, read, stop, read logs of and delete Azure Container Instances groups.'
    type: 'customRole'
    permissions: [
      {
        actions: ['Microsoft.ContainerInstance/containerGroups/*']
        notActions: []
      }
    ]
    assignableScopes: [resourceGroup().id]
  }
}

resource subnetJoinRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (hasSubnet) {
  name: guid(resourceGroup().id, 'model-launcher-subnet-join')
  properties: {
    roleName: 'Model Launcher subnet join (${resourceGroup().name}, ${take(token, 6)})'
    description: 'Place container groups in a delegated subnet.'
    type: 'customRole'
    permissions: [
      {
        actions: [
          'Microsoft.Network/virtualNetworks/subnets/join/action'
          'Microsoft.Network/virtualNetworks/subnets/read'
        ]
        notActions: []
      }
    ]
    assignableScopes: subnetInThisGroup ? [resourceGroup().id] : [resourceGroup().id, subnetGroupId]
  }
}

// ---------------------------------------------------------------------------------------------
// Role assignments
// ---------------------------------------------------------------------------------------------

// App -> watched container only: list, read, write, lease, delete blobs (claim/move batches).
resource appWatchData 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(watchContainer.id, functionApp.id, roles.storageBlobDataContributor)
  scope: watchContainer
  properties: {
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
  }
}

// App -> the notification queue only: send messages, nothing else (no peek, read or delete).
resource appNotifyQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasNotifyQueue) {
  name: guid(dataStorage.id, 'notify-queue', functionApp.id, roles.storageQueueDataMessageSender)
  scope: notifyQueue
  properties: {
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataMessageSender)
  }
}

// App -> host storage: the Functions host creates containers and keeps timer locks, keys and the
// deployment package in blobs (Storage Blob Data Owner is the documented minimum) ...
resource appHostBlobs 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, functionApp.id, roles.storageBlobDataOwner)
  scope: hostStorage
  properties: {
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
  }
}

// ... and persists diagnostic events in tables. Timer and HTTP triggers need no queue role; add
// Storage Queue Data Contributor here if a blob or queue trigger is ever introduced.
resource appHostTables 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, functionApp.id, roles.storageTableDataContributor)
  scope: hostStorage
  properties: {
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
  }
}

// App -> container groups in this resource group (create, get, list, logs, stop, delete).
// Custom roles are referenced by their subscription-level ID, the form role assignments expect.
var aciOperatorRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', aciOperatorRole.name)
var subnetJoinRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', guid(resourceGroup().id, 'model-launcher-subnet-join'))

resource appAciOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, functionApp.id, 'model-launcher-aci-operator')
  properties: {
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: aciOperatorRoleId
  }
  dependsOn: [aciOperatorRole]
}

// App -> attach the containers' identity to the groups it creates (assign/action on it alone).
resource appAssignsContainerIdentity 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(containerIdentity.id, functionApp.id, roles.managedIdentityOperator)
  scope: containerIdentity
  properties: {
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.managedIdentityOperator)
  }
}

// App -> join the containers' subnet (only that subnet): the template's own in private mode, else
// the given one. A given subnet in another resource group is assigned by scripts/deploy.sh
// (output subnetJoinPending).
resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' existing = if (subnetInThisGroup) {
  name: isPrivate ? vnetName : subnetParts[8]
}

resource subnet 'Microsoft.Network/virtualNetworks/subnets@2024-05-01' existing = if (subnetInThisGroup) {
  parent: vnet
  name: isPrivate ? aciSubnetName : subnetParts[10]
}

resource appJoinsSubnet 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (subnetInThisGroup) {
  name: guid(aciSubnetId, functionApp.id, 'model-launcher-subnet-join')
  scope: subnet
  properties: {
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subnetJoinRoleId
  }
  dependsOn: [subnetJoinRole, privateNetwork]
}

// Containers -> watched container only: read inputs and the manifest, write results.
resource containersWatchData 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(watchContainer.id, containerIdentity.id, roles.storageBlobDataContributor)
  scope: watchContainer
  properties: {
    principalId: containerIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
  }
}

// A person (principalId) -> drop files and read results in the watched container.
resource personWatchData 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(principalId)) {
  name: guid(watchContainer.id, principalId, roles.storageBlobDataContributor)
  scope: watchContainer
  properties: {
    principalId: principalId
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
  }
}

// Containers -> pull the worker image. A registry in another resource group is assigned by
// scripts/deploy.sh (output acrPullPending).
resource containerRegistry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = if (hasRegistry && registryInThisGroup) {
  name: registryName
}

resource containersPullImages 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (hasRegistry && registryInThisGroup) {
  name: guid(resourceGroup().id, registryName, containerIdentity.id, roles.acrPull)
  scope: containerRegistry
  properties: {
    principalId: containerIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPull)
  }
}

// ---------------------------------------------------------------------------------------------
// Outputs (read by scripts/deploy.sh; azd keeps them in its environment). No secret ever:
// appSettingNames lists names only, built without touching the secure parameter.
// ---------------------------------------------------------------------------------------------

output functionAppName string = functionApp.name
output functionAppHostName string = functionApp.properties.defaultHostName
output functionPrincipalId string = functionApp.identity.principalId
output storageAccountName string = dataStorage.name
output storageAccountUrl string = 'https://${dataStorage.name}.${blobSuffix}'
output hostStorageAccountName string = hostStorage.name
output containerName string = watchContainer.name
output containerIdentityId string = containerIdentity.id
output containerIdentityClientId string = containerIdentity.properties.clientId
output containerIdentityPrincipalId string = containerIdentity.properties.principalId
output registryServer string = registryServer
output registryName string = registryName
output acrPullPending bool = hasRegistry && !registryInThisGroup
output subnetJoinPending bool = hasSubnet && !subnetInThisGroup
output subnetJoinRoleId string = hasSubnet ? subnetJoinRoleId : ''
output network string = network
output containerSubnetId string = hasSubnet ? aciSubnetId : ''
output appSettingNames array = concat(baseSettingNames, hasRegistry ? ['ACI_REGISTRY_SERVER'] : [], hasSubnet ? ['ACI_SUBNET_ID'] : [], hasNotifyQueue ? ['NOTIFY_QUEUE'] : [], empty(notifyWebhookUrl) ? [] : ['NOTIFY_WEBHOOK_URL', 'NOTIFY_WEBHOOK_SECRET'], empty(jobProfiles) ? [] : ['JOB_PROFILES'], map(extraSettingsKept, setting => setting.name))
