"""Gateway: terminates node and client WebSockets and publishes their events."""
