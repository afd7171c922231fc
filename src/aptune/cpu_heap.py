"""One glibc heap setting for every `aptune` process, so that peak memory on CPU measures tensors.

On CPU, peak training memory is peak RSS (docs/protocol.md#training-memory). glibc's default
heap raises its mmap threshold each time a large block is freed, after which tensors of up to
32 MiB come from the arenas, and freed ones stay there: RSS then carries allocator history, not
just live tensors. Measured on MiniLM SST-2 (1k scale), APT's peak read 97.8% of FT's on the
default heap and 64.0% with the threshold fixed at 64 KiB. Fixing the threshold makes every
block of 64 KiB or more its own mapping, returned to the OS when freed, for every method alike.

Each new mapping is faulted in and zeroed page by page, which costs step time. torch's CPU
allocator backs blocks of 2 MiB or more with transparent huge pages when THP_MEM_ALLOC_ENABLE=1
(one fault per 2 MiB instead of per 4 KiB), so that is set too. Measured on MiniLM FT, 2,000 SST-2
sentences, 63 steps, two runs each (README#what-a-run-writes): default heap 1.114 / 1.162 s/step at
a 970 / 959 MiB peak; threshold fixed 1.403 / 1.315 s/step at 686 MiB; fixed with huge pages
1.289 / 1.230 s/step at 686 MiB.

The `aptune` command fixes it at start-up, before torch allocates anything (the library, when
imported, leaves the process's allocator alone). `APTUNE_CPU_HEAP=default` keeps glibc's dynamic
threshold; a MALLOC_MMAP_THRESHOLD_ or THP_MEM_ALLOC_ENABLE set by the user is kept as it is.
No torch import here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
THRESHOLD_BYTES = 64 * 1024
ENV = "APTUNE_CPU_HEAP"
THP_ENV = "THP_MEM_ALLOC_ENABLE"  # read by torch's CPU allocator at its first allocation

# How this process's heap is set, for the memory figures' description.
state = "glibc default (dynamic mmap threshold)"
# Whether the threshold is fixed (by aptune or by MALLOC_MMAP_THRESHOLD_): large freed blocks
# then go back to the OS at once, and the training loop need not trim the heap after each step.
fixed = False


def fix_mmap_threshold(force: bool = False) -> str:
    """Fix glibc's mmap threshold at 64 KiB unless the user chose otherwise (or `force`, for the
    bench's inference-memory passes, which fix it whatever the user chose); returns `state`."""
    global state, fixed
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") and not force:
        state = f"glibc mmap threshold {os.environ['MALLOC_MMAP_THRESHOLD_']} bytes (MALLOC_MMAP_THRESHOLD_)"
        fixed = True
        return state
    if os.environ.get(ENV, "").lower() == "default" and not force:
        return state
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES) == 1:
            os.environ.setdefault(THP_ENV, "1")  # fewer page faults for the mapped blocks
            huge = ", huge pages" if os.environ[THP_ENV] == "1" else ""
            state = f"glibc mmap threshold fixed at {THRESHOLD_BYTES // 1024} KiB{huge}"
            fixed = True
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to set
        pass
    return state
