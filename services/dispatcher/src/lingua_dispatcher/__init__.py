"""Dispatcher: job requests, ``select_node.lua`` and the job state machine (requirements
J1-J8): it creates a job per utterance, selects a node and takes its slot, sends the job through
the node's gateway, takes jobs back on timers and node loss, and delivers each outcome to the
session's gateway.
"""
