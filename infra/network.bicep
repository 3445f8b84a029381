// Model Launcher, private network mode (main.bicep `network: 'private'`): the VNet, its three
// subnets, the private DNS zones of the storage services and one private endpoint per storage
// account and service. main.bicep decides which endpoints exist (storageEndpoints) and locks the
// storage accounts; this module only builds the network that reaches them.
//
// Written against the published API reference (no Bicep compiler or Azure access where it was
// written): Microsoft.Network virtualNetworks and privateEndpoints 2024-05-01, privateDnsZones
// and virtualNetworkLinks 2020-06-01. See docs/deployment.md for what has been deployed for real.

targetScope = 'resourceGroup'

@description('Azure region of the VNet and the private endpoints (the app\'s region).')
param location string

@description('Tags for every resource.')
param tags object

@description('Name of the VNet.')
param vnetName string

@description('Address space of the VNet, a /22 or larger: four /24 subnets are carved from it (the fourth is left free).')
param addressPrefix string

@description('Subnet for Flex Consumption VNet integration (delegated to Microsoft.App/environments).')
param appSubnetName string

@description('Subnet for the container groups (delegated to Microsoft.ContainerInstance/containerGroups).')
param aciSubnetName string

@description('Subnet for the private endpoints.')
param endpointSubnetName string

@description('Private endpoints to create: [{ name, storageId, group }], group being the storage service (blob, table, queue, file).')
param storageEndpoints array

// One zone per storage service in use, e.g. privatelink.blob.core.windows.net in the public cloud.
// union() of an array with itself drops the duplicates.
var groups = union(map(storageEndpoints, endpoint => endpoint.group), [])
var zoneSuffix = environment().suffixes.storage

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: { addressPrefixes: [addressPrefix] }
    // Subnets are declared inline (not as child resources) so that redeploying the template does
    // not try to delete and recreate them while the app and the container groups use them.
    subnets: [
      {
        name: appSubnetName
        properties: {
          addressPrefix: cidrSubnet(addressPrefix, 24, 0)
          // The app calls ARM and Entra ID and sends telemetry over the internet; new subnets are
          // moving to "private by default" (no outbound access), so say what this one needs.
          defaultOutboundAccess: true
          delegations: [
            {
              name: 'flex-consumption'
              properties: { serviceName: 'Microsoft.App/environments' }
            }
          ]
        }
      }
      {
        name: aciSubnetName
        properties: {
          addressPrefix: cidrSubnet(addressPrefix, 24, 1)
          // The container groups pull the worker image from a registry over the internet.
          defaultOutboundAccess: true
          delegations: [
            {
              name: 'container-groups'
              properties: { serviceName: 'Microsoft.ContainerInstance/containerGroups' }
            }
          ]
        }
      }
      {
        name: endpointSubnetName
        properties: {
          addressPrefix: cidrSubnet(addressPrefix, 24, 2)
          privateEndpointNetworkPolicies: 'Disabled'
          defaultOutboundAccess: false
        }
      }
    ]
  }
}

resource zones 'Microsoft.Network/privateDnsZones@2020-06-01' = [
  for group in groups: {
    name: 'privatelink.${group}.${zoneSuffix}'
    location: 'global'
    tags: tags
  }
]

// Both the app (through its VNet integration) and the container groups (in the VNet) resolve the
// accounts' usual host names to the private endpoints through these links.
resource zoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [
  for (group, i) in groups: {
    parent: zones[i]
    name: '${vnetName}-link'
    location: 'global'
    tags: tags
    properties: {
      registrationEnabled: false
      virtualNetwork: { id: vnet.id }
    }
  }
]

resource endpoints 'Microsoft.Network/privateEndpoints@2024-05-01' = [
  for endpoint in storageEndpoints: {
    name: '${vnetName}-pe-${endpoint.name}'
    location: location
    tags: tags
    properties: {
      subnet: { id: '${vnet.id}/subnets/${endpointSubnetName}' }
      privateLinkServiceConnections: [
        {
          name: endpoint.name
          properties: {
            privateLinkServiceId: endpoint.storageId
            groupIds: [endpoint.group]
          }
        }
      ]
    }
  }
]

// The zone group writes the endpoint's A record into the service's zone.
resource endpointDns 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = [
  for (endpoint, i) in storageEndpoints: {
    parent: endpoints[i]
    name: 'default'
    properties: {
      privateDnsZoneConfigs: [
        {
          name: endpoint.group
          properties: {
            privateDnsZoneId: resourceId('Microsoft.Network/privateDnsZones', 'privatelink.${endpoint.group}.${zoneSuffix}')
          }
        }
      ]
    }
    dependsOn: [zones, zoneLinks]
  }
]

output vnetId string = vnet.id
output zoneNames array = [for group in groups: 'privatelink.${group}.${zoneSuffix}']
