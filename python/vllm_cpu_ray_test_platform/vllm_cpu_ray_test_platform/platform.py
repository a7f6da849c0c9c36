"""The platform class (imported by vLLM only when the plugin is active)."""
from vllm.platforms.cpu import CpuPlatform


class CpuRayTestPlatform(CpuPlatform):
    # Ray resource each vLLM worker reserves: the tests' CPU nodes offer
    # "GPU" slots (ray start --num-gpus N) for exactly this.
    ray_device_key: str = "GPU"
