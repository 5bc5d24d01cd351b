"""XLA flags for the CPU test processes: virtual devices, and the backend's
lowest optimisation level. Tests compile many small programs and run each a
few times, so LLVM's optimisation passes cost more than they save (about a
fifth of an engine test's time); every comparison in the suite is between
programs compiled alike or against tolerances, never against timings."""

FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices: int, fast_compile: bool = True) -> str:
    """``XLA_FLAGS`` for a test process with ``devices`` virtual CPU devices
    (``fast_compile=False`` for processes that mostly run programs restored
    from a compile cache)."""
    flags = f"--xla_force_host_platform_device_count={devices}"
    return f"{flags} {FAST_COMPILE}" if fast_compile else flags
