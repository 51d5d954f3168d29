"""Dispatcher: job requests, ``select_node.lua`` and the job state machine (MISSION J1-J8).

For now a skeleton: it opens the shared infrastructure (Redis, Lua scripts, RabbitMQ topology,
publisher) so a broken dependency fails start-up, and serves health, readiness and metrics.
It has no consumers yet: the job path (J4 ``select_node.lua``, J5 dispatch) is a later issue.
"""
