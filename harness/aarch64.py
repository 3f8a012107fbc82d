"""An aarch64 Debian Bookworm root run under qemu-user, for the test that installs and runs the unit as a Raspberry
Pi would (Bookworm's Python 3.11 and NumPy 1.24, a venv with the system's site packages).

Every unit in the field is aarch64 and every other test runs on x86: LiteRT picks other kernels there, and a
quantized model's p_defect moves. The root is built once with ``debootstrap`` (minutes) and kept in
``DEFECT_AARCH64_ROOT`` (default ``/var/cache/defect-inspection/aarch64-bookworm``), so a machine that keeps its
disk between runs pays for it once; an interrupted build is started again, never reused half-made.

It needs root (``debootstrap``, ``chroot``, ``mount``), Debian's ``qemu-user-static`` and ``debootstrap``, and the
kernel's ``binfmt_misc`` with the qemu-aarch64 handler registered; ``missing()`` sets up what it can and says what
is not there.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(os.environ.get("DEFECT_AARCH64_ROOT", "/var/cache/defect-inspection/aarch64-bookworm"))
PACKAGES = "python3,python3-venv,python3-pip,python3-numpy,ca-certificates"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
HANDLER = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
SRC = "/usr/src/defect-inspection"  # where the checkout is copied inside the root
PREFIX = "/opt/defect-edge"         # make install's default, as on a Pi
# The CPUs qemu emulates, as the boards have them: a Raspberry Pi 4's Cortex-A72 (no dot product) and a Pi 5's
# Cortex-A76 (dot product). Not qemu's default "max": it offers features no Pi has (i8mm, SVE), XNNPACK picks int8
# kernels for them, and under qemu 7.2 those return one value for every input (0.9961 on 6 of 6 casting photos).
PI_CPUS = {"pi4": "cortex-a72", "pi5": "cortex-a76"}
# The CPU lists LiteRT's cpuinfo reads before it creates the XNNPACK delegate. A chroot has no /sys; without them it
# says "failed to parse the list of possible processors" and runs its reference kernels, which no Pi runs.
CPU_LISTS = ("sys/devices/system/cpu/possible", "sys/devices/system/cpu/present")
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def _register() -> None:
    """Mount ``binfmt_misc`` and register qemu-aarch64 from Debian's own handler file, unless already done."""
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True, capture_output=True)
    if not (BINFMT / "qemu-aarch64").exists():
        (BINFMT / "register").write_text(HANDLER.read_text().strip() + "\n")


def missing() -> str | None:
    """Why an aarch64 root cannot run here, or None once it can (after registering the handler if needed)."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot and mount); run the suite as root, as CI does"
    for tool, package in (("debootstrap", "debootstrap"), ("qemu-aarch64-static", "qemu-user-static")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install {package})"
    if not HANDLER.exists():
        return f"{HANDLER} is missing (Debian's qemu-user-static provides it)"
    try:
        _register()
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", b"") or str(e).encode()
        return f"the kernel's binfmt_misc cannot run aarch64 programs here: {detail.decode(errors='replace').strip()}"
    return None


def mirror() -> str:
    """The Debian mirror this machine's apt uses (a plant network's proxy or snapshot), else Debian's own."""
    sources = [*sorted(Path("/etc/apt/sources.list.d").glob("*.sources")), Path("/etc/apt/sources.list")]
    for f in sources:
        text = f.read_text() if f.exists() else ""
        for url in re.findall(r"(?m)^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s*)?)(\S+)", text):
            if "security" not in url:
                return str(url)
    return "http://deb.debian.org/debian"


def build(root: Path = ROOT) -> Path:
    """The root, built by ``debootstrap`` if it is not there yet; the machine's CA bundle, resolver and pip
    configuration are copied in so pip inside reaches the same package index as the machine."""
    done = root / ".complete"
    if not done.exists():
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={PACKAGES}", "bookworm",
                        str(partial), mirror()], check=True, capture_output=True, timeout=40 * 60)
        shutil.rmtree(root, ignore_errors=True)
        partial.replace(root)
        done.touch()
    for rel in CPU_LISTS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("0-3\n")  # a Pi's four cores
    for f in ("/etc/ssl/certs/ca-certificates.crt", "/etc/resolv.conf", "/etc/pip.conf"):
        if Path(f).exists():
            target = root / f.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)  # a symlink debootstrap made would point outside the root
            shutil.copyfile(f, target)
    return root


@contextlib.contextmanager
def proc_mounted(root: Path) -> Iterator[None]:
    """``/proc`` inside the root for as long as programs run there (Python and LiteRT read it)."""
    target = root / "proc"
    mounted = not os.path.ismount(target)
    if mounted:
        subprocess.run(["mount", "-t", "proc", "proc", str(target)], check=True, capture_output=True)
    try:
        yield
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def run(root: Path, argv: Sequence[str], timeout: float, env: dict[str, str] | None = None, cpu: str = "pi4"
        ) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the root with a clean environment, on the emulated CPU of board ``cpu``
    (:data:`PI_CPUS`); the caller checks the exit status."""
    full = {**ENV, "QEMU_CPU": PI_CPUS[cpu], **(env or {})}
    return subprocess.run(["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in full.items()),
                           *argv], capture_output=True, text=True, timeout=timeout)


def copy_checkout(root: Path, checkout: Path) -> str:
    """Copy the checkout's tracked kinds of files into the root (no venv, no build output); return its path there."""
    target = root / SRC.lstrip("/")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(checkout, target, ignore=shutil.ignore_patterns(
        ".git", ".venv", "var", "__pycache__", "*.egg-info", ".*_cache", "build", "dist", "node_modules"))
    return SRC
