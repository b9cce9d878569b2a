"""distributed.init on a CPU keeps freed host memory for reuse: a tensor the size of a vocabulary
gradient, made anew each step, stops costing a page fault per 4 KB page."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from bertkit import distributed
if sys.argv[1] == "init":
    distributed.init("cpu")
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    g = torch.zeros(30522, 384)  # MiniLM's word-embedding gradient: 47 MB
    small = [torch.empty(373, 1536) for _ in range(8)]  # activations made and freed between
    del g, small
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[1:]))
"""


def faults_per_step(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_cpu_init_keeps_large_freed_tensors_in_the_heap():
    if sys.platform != "linux":
        pytest.skip("glibc's mallopt: Linux only")
    pages = 30522 * 384 * 4 // 4096
    assert faults_per_step("plain") > pages // 2  # the control: fresh pages for every large tensor
    assert faults_per_step("init") < pages // 20
