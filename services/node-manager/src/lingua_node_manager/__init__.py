"""Node-manager: consumes node events and runs the node lifecycle Lua scripts."""
