"""How does a process outside the worker talk to a workflow? One client module per workflow.

`pool` (`WarmPoolWorkflow`: leases, status, signals), `slot` (`WarmSlotWorkflow`: status,
retire) and `token_watch` (`TokenWatchWorkflow`). They call workflows by the names in
`warmpool/names.py` with the models of `warmpool/models.py` and `warmpool/tokens.py`, never
by importing workflow code, so the CLI, the gateway, chaos and bench stay above the workflows
without loading them. Part of the library: they import nothing above it.
"""
