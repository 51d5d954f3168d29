"""What the integration, fault and hostile-input suites share; no test module imports a
``conftest`` or another test module, only these.

- ``stack``: the services as real processes (``Stack``, ``started_stack``, ``start_all``),
  the settings every stack runs with (``STACK_ENV``, ``JOB_ENV``) and the job-path stack's
  processes (``JOB_SERVICES``).
- ``sessions``: clients of ``/ws/session``: ``open_session`` / ``send_utterance`` /
  ``answers``, and ``WebClient``, which behaves as lingua's web client.
- ``agents``: node agents: in-process (``agent_config``, ``agent``, ``node``, ``lingua_node``,
  run with ``running`` or ``agent_task``) and as processes a test can kill (``NodeProcess``,
  ``node_processes``).
- ``helpers``: polling (``eventually``), a hand-made node's ``register_frame``, reading Redis
  (``node_state``, ``node_ready``...) and a service's /metrics (``metric``).
- ``invariants``: the idle-system invariants checked at the end of a test.
- ``fixtures``: the fixtures and the report hook several suites use (``stack_env``),
  registered for every suite by the root ``conftest.py``.
"""
