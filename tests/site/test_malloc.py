"""glibc malloc settings of the project's processes, observed from the kernel's page-fault counter."""

import subprocess
import sys

import pytest

PROGRAM = """
import ctypes, resource, sys
from imaginaition_site.malloc import reuse_large_blocks
if sys.argv[1] == "tuned":
    reuse_large_blocks()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 40 << 20  # a 40 MB block, as a segmenter's feature map (torch allocates through malloc)

def use_once():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)

use_once()  # warm: the first block faults its pages in whatever the settings
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    use_once()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* variable: they would win over the settings
    result = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True, env=env)
    return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings exist on Linux only")
def test_workers_reuse_large_blocks_instead_of_faulting_them_in_again():
    default, tuned = page_faults("default"), page_faults("tuned")
    assert default > 20 * 5000  # every 40 MB block mapped afresh: its pages zeroed and faulted in again
    assert tuned < default / 20  # kept in the heap and reused
