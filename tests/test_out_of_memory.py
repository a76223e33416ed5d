"""Running out of memory: every allocator's words are recognised, and the CLI says so in one line."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.app.cli import main
from engine.core.device import OUT_OF_MEMORY_MESSAGE, is_out_of_memory
from engine.core.errors import MethodInputError

ROOT = Path(__file__).resolve().parents[1]


def real_cpu_allocation_failure() -> RuntimeError:
    """What PyTorch's CPU allocator raises, provoked for real: a petabyte is refused at once, untouched."""
    try:
        torch.empty(1 << 50, dtype=torch.uint8)
    except RuntimeError as exc:
        return exc
    raise AssertionError("a petabyte was allocated")


@pytest.mark.parametrize("message", [
    # Linux and macOS (c10/core/impl/alloc_cpu.cpp)
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
    "120000000000 bytes. Error code 12 (Cannot allocate memory)",
    # Windows
    "[enforce fail at C:\\actions-runner\\_work\\pytorch\\pytorch\\c10\\core\\impl\\alloc_cpu.cpp:72] data. "
    "DefaultCPUAllocator: not enough memory: you tried to allocate 120000000000 bytes.",
    "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB total capacity)",
    "MPS backend out of memory (MPS allocated: 1.2 GB, other allocations: 3.4 GB, max allowed: 4.5 GB).",
    # oneDNN's convolution on the CPU, its scratchpad refused (seen under the capped address
    # space of the test below when other work ran on the cores)
    "could not create a primitive",
])
def test_the_allocators_messages_are_recognised(message):
    assert is_out_of_memory(RuntimeError(message))


def test_a_real_cpu_allocation_failure_is_recognised():
    assert is_out_of_memory(real_cpu_allocation_failure())


def test_an_allocation_failure_wrapped_in_a_message_for_the_user_is_recognised():
    failure = real_cpu_allocation_failure()
    try:
        raise MethodInputError(f"the model does not accept a 1x3x2048x2048 input: {failure}") from failure
    except MethodInputError as wrapped:
        assert is_out_of_memory(wrapped)


def test_other_errors_are_not_taken_for_running_out_of_memory():
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (1x3 and 4x5)"))
    assert not is_out_of_memory(MethodInputError("the image is out of memory range"))  # our words, not an allocator's
    assert not is_out_of_memory(None)


@pytest.mark.parametrize("size, message", [
    ("-5", "--size must be at least 1, not -5"),
    ("0", "--size must be at least 1, not 0"),
    ("100000", "--size must be at most 2048, not 100000"),
    ("abc", "--size expects a whole number, not 'abc'"),
])
def test_layers_refuses_a_size_outside_its_range_in_one_line(capsys, size, message):
    code = main(["layers", "--size", size])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"error: {message}"]


def test_layers_at_its_largest_size_lists_the_layers(capsys):
    code = main(["layers", "--size", "2048"])
    out, _err = capsys.readouterr()
    assert code == 0
    line = next(line for line in out.splitlines() if line.strip().startswith("stem.conv"))
    assert "1024x1024" in line


def test_a_run_that_runs_out_of_memory_exits_3_with_one_line():
    """A real allocation failure: the process's address space is capped just above what it
    uses, and a dream at 2048 px without tiles needs gigabytes. (The layer listing no longer
    serves: it traces on the meta device, which allocates nothing at any size.)"""
    script = (
        "import resource, sys\n"
        "from engine.core.runtime import configure_process\n"
        "configure_process()\n"
        "from engine.app.cli import main\n"
        "from engine.models.registry import load_model\n"
        "from engine.data.samples import sample_path\n"
        "import engine.methods, engine.app.session\n"
        "load_model()\n"  # every lazy import, and the weights' first read, before the cap
        "size = next(int(line.split()[1]) * 1024 for line in open('/proc/self/status') if line.startswith('VmSize'))\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + (128 << 20), resource.RLIM_INFINITY))\n"
        "sys.exit(main(['run', 'dream', '--image', str(sample_path('chelsea')), '--size', '2048', '--steps', '1',\n"
        "               '--octaves', '1', '--tile', '0']))\n"
    )
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux's /proc to measure the address space")
    completed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 3, completed.stderr
    assert completed.stdout == ""
    assert completed.stderr.strip().splitlines() == [f"error: {OUT_OF_MEMORY_MESSAGE}"]
