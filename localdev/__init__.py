"""Local development stand-ins (Azurite runner, ACI emulator, local Functions host): dev tools only."""
