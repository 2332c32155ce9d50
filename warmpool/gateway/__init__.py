"""The gateway: the studio front end's one HTTP service (`python -m warmpool.gateway`).

Leases GPUs (`/api/leases`), forwards ComfyUI traffic to the leased instance
(`/comfy/{lease_id}/...`, HTTP and websocket), serves the seeds' admin endpoints
(`/api/proxy/...`) and Prometheus metrics (`/metrics`). `app.create_app` builds it.
"""
