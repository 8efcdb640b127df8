"""Resident-set readings of this process (Linux /proc), for the benchmarks' fresh-process CPU memory probes."""

from pathlib import Path


def rss_kib(field_name: str) -> int | None:
    """VmRSS or VmHWM of this process in KiB, from /proc/self/status (None where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current resident set (Linux >= 4.0); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
