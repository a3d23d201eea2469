"""The allocator setting: large tensors freed and allocated again reuse memory instead of page-faulting anew."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt (Linux only)")

# 64 MB, above glibc's largest mmap threshold: by default every such allocation is fresh mmap pages (16k faults).
PROBE = """
import json, resource, sys
from thawline.training import runtime
kept = runtime.keep_freed_memory()
import torch
def faults_of_alloc():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20)
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults = [faults_of_alloc() for _ in range(40)]
print(json.dumps({"kept": kept, "faults": faults[-5:]}))  # after the heap has settled (<~12 rounds)
"""


def _probe(**env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_freed_large_tensors_are_reused_without_page_faults():
    kept = _probe()
    default = _probe(THAWLINE_MALLOC="default")
    assert kept["kept"] is True and default["kept"] is False
    pages = 64 * 2**20 // 4096
    assert min(default["faults"]) > pages // 2  # the default allocator maps (and faults in) the 64 MB every time
    assert max(kept["faults"]) < pages // 20  # kept: once the heap has settled, each allocation reuses freed pages


def test_keep_freed_memory_is_idempotent():
    from thawline.training import runtime

    first = runtime.keep_freed_memory()
    assert runtime.keep_freed_memory() == first
