"""The app API (``api.listen``): what the local app calls to register, heartbeat, and read the catalog."""
