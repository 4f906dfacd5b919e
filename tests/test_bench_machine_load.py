"""The bench says how much CPU other processes took while an item ran: runs taken beside a busy
process are told apart from npcai's own timings."""

import os
import subprocess
import sys

import pytest

from npcai.bench.machine_load import OtherLoad

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc (Linux)")

_BURN = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"


def test_another_process_burning_cpu_is_counted_as_other_load():
    load = OtherLoad([os.getpid()])
    started = os.times().elapsed
    subprocess.run([sys.executable, "-c", _BURN], check=True)  # 0.6 s of CPU in a process not ours
    cores = load.cores(os.times().elapsed - started)
    assert cores is not None and cores > 0.3


def test_the_processes_named_are_not_counted_as_other_load():
    child = subprocess.Popen([sys.executable, "-c", _BURN])
    with_child, without = OtherLoad([os.getpid(), child.pid]), OtherLoad([os.getpid()])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped: its times are readable
    # over the same second, the two differ by exactly the child's CPU, whatever else the machine did
    difference = without.cores(1.0) - with_child.cores(1.0)
    child.wait()
    assert 0.5 < difference < 0.8
