"""Where does the pool rent from when there is no Vast.ai? A faithful in-memory Vast.ai (plus the
HF and Civitai token checks) whose instances serve ComfyUI on real loopback ports.

async with Simulator(SimConfig(speed=20)) as sim:
    ...  # point the client at sim.base_url with sim.api_key
"""

from vastsim.config import Fault, SimConfig
from vastsim.records import CallRecord, InstanceInfo
from vastsim.simulator import Simulator

__all__ = ["CallRecord", "Fault", "InstanceInfo", "SimConfig", "Simulator"]
