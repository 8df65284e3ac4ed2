"""Kernel confinement for the upload parser's child (service/sandbox.py): what it may open and which
system calls it may make, so that a parser exploited by a hostile file (HDF5's C library has had many
memory-safety bugs) cannot reach past the upload it was given.

- **Files (Landlock)**: after `confine()` the process opens only the upload (read), what Python and its
  libraries need to import (read and execute beneath sys.prefix and the import path), and nothing else:
  not another tenant's dataset, the API keys file, or Redis's append-only file. Descriptors it already
  holds (the result pipe, the output file) stay usable.
- **System calls (seccomp)**: no sockets (it cannot reach Redis, which holds every job and key), no
  exec, no signals to other processes (the API, the fork server), no keystrokes pushed into a terminal
  (TIOCSTI: its stdio may be `dnnq up`'s terminal), no ptrace or cross-process memory
  access, no io_uring (its operations bypass seccomp), no bpf, userfaultfd or new namespaces. A denied
  call fails with EPERM; a system call of another ABI (i386's int 0x80 on x86_64) kills the process.

Both need Linux (Landlock 5.13+, built in and enabled; seccomp filters 3.5+) on x86_64 or aarch64;
`support()` says what this kernel offers, and the API logs what a parser runs without.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ConfinementError", "confine", "support"]

# prctl(2)
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_SECCOMP = 21
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

# landlock(7)
_SYS_LANDLOCK_CREATE_RULESET = 444  # the same numbers on every architecture
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
# The rights a regular file (not a directory) may be given in a rule: execute, write, read, truncate, ioctl.
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | (1 << 14) | (1 << 15)
# Every filesystem right the kernel's Landlock version knows: ABI 1 has bits 0-12, 2 adds REFER (13),
# 3 TRUNCATE (14), 5 IOCTL_DEV (15). Handled and not granted means denied.
_FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_FS_RIGHTS_LATEST = (1 << 16) - 1
_O_PATH = getattr(os, "O_PATH", 0o10000000)

# seccomp's BPF (linux/filter.h, linux/seccomp.h, linux/audit.h)
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW, _RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
_RET_EPERM = 0x00050000 | errno.EPERM
_DATA_NR, _DATA_ARCH, _DATA_ARG0 = 0, 4, 16  # struct seccomp_data offsets (arg0's low word: little-endian)

# Per architecture: its audit id, the calls denied outright, the signal senders allowed only towards the
# process itself (arg 0 = its pid), and ioctl's number (denied for the terminal requests below).
_ARCHES: dict[str, tuple[int, dict[str, int], dict[str, int], int]] = {
    "x86_64": (
        0xC000003E,
        {
            "socket": 41, "connect": 42, "accept": 43, "bind": 49, "listen": 50, "socketpair": 53,
            "accept4": 288, "execve": 59, "execveat": 322, "ptrace": 101, "tkill": 200,
            "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297, "process_vm_readv": 310,
            "process_vm_writev": 311, "pidfd_send_signal": 424, "pidfd_getfd": 438, "io_uring_setup": 425,
            "io_uring_enter": 426, "io_uring_register": 427, "bpf": 321, "userfaultfd": 323,
            "perf_event_open": 298, "unshare": 272, "setns": 308,
        },
        {"kill": 62, "tgkill": 234},
        16,
    ),
    "aarch64": (
        0xC00000B7,
        {
            "socket": 198, "connect": 203, "accept": 202, "bind": 200, "listen": 201, "socketpair": 199,
            "accept4": 242, "execve": 221, "execveat": 281, "ptrace": 117, "tkill": 130,
            "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240, "process_vm_readv": 270,
            "process_vm_writev": 271, "pidfd_send_signal": 424, "pidfd_getfd": 438, "io_uring_setup": 425,
            "io_uring_enter": 426, "io_uring_register": 427, "bpf": 280, "userfaultfd": 282,
            "perf_event_open": 241, "unshare": 97, "setns": 268,
        },
        {"kill": 129, "tgkill": 131},
        29,
    ),
}  # fmt: skip
_X32_SYSCALL_BIT = 0x40000000  # x86_64's x32 ABI: the same calls under other numbers
# TIOCSTI and TIOCLINUX push keystrokes into a terminal: the child's stdio may be `dnnq up`'s terminal.
_TERMINAL_INJECTION = (0x5412, 0x541C)
_DATA_ARG1 = 24


class ConfinementError(OSError):
    """The kernel offers a confinement but refused to set it up."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _arch() -> str | None:
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return machine if sys.platform == "linux" and machine in _ARCHES else None


def _landlock_abi(libc: ctypes.CDLL) -> int:
    if sys.platform != "linux":
        return 0
    version = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    return max(int(version), 0)  # -1: ENOSYS (too old) or EOPNOTSUPP (not enabled at boot)


def _seccomp_available(libc: ctypes.CDLL) -> bool:
    return _arch() is not None and libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0) >= 0


def support() -> dict[str, int | bool]:
    """What this kernel offers: {"landlock": its ABI version (0: none), "seccomp": filters on this arch}."""
    libc = _libc()
    return {"landlock": _landlock_abi(libc), "seccomp": _seccomp_available(libc)}


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise ConfinementError(code, f"{what}: {os.strerror(code)}")
    return result


def _restrict_files(libc: ctypes.CDLL, abi: int, read_files: Iterable[Path], read_trees: Iterable[Path]) -> None:
    handled = _FS_RIGHTS_BY_ABI.get(abi, _FS_RIGHTS_LATEST)
    attr = struct.pack("=Q", handled)  # landlock_ruleset_attr's first field: the size says only it is given
    ruleset = _check(libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, attr, len(attr), 0), "landlock_create_ruleset")
    try:
        rules = [(path, _FS_READ_FILE) for path in read_files]
        rules += [(path, _FS_READ_FILE | _FS_READ_DIR | _FS_EXECUTE) for path in read_trees]
        for path, access in rules:
            try:
                fd = os.open(path, _O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # an import path entry that does not exist (or is a zip): nothing to allow
            try:
                if not os.path.isdir(path):
                    access &= _FILE_RIGHTS
                rule = struct.pack("=Qi", access & handled, fd)  # landlock_path_beneath_attr, packed
                _check(libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH, rule, 0), str(path))
            finally:
                os.close(fd)
        _check(libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _filter_program(arch: str, own_pid: int) -> bytes:
    audit_arch, denied, signals, ioctl = _ARCHES[arch]
    code: list[tuple[int, int, int, int]] = []  # (code, jt, jf, k); jumps count instructions skipped

    def jump_to(label: str, *, cond: int, k: int) -> None:
        code.append((cond, 0, 0, k))
        fixups.append((len(code) - 1, label))

    fixups: list[tuple[int, str]] = []
    labels: dict[str, int] = {}
    code.append((_BPF_LD_W_ABS, 0, 0, _DATA_ARCH))
    code.append((_BPF_JEQ_K, 1, 0, audit_arch))
    code.append((_BPF_RET_K, 0, 0, _RET_KILL_PROCESS))  # another ABI's numbering: nothing below applies
    code.append((_BPF_LD_W_ABS, 0, 0, _DATA_NR))
    if arch == "x86_64":
        jump_to("deny", cond=_BPF_JGE_K, k=_X32_SYSCALL_BIT)
    for nr in sorted(denied.values()):
        jump_to("deny", cond=_BPF_JEQ_K, k=nr)
    for nr in sorted(signals.values()):
        jump_to("own_pid", cond=_BPF_JEQ_K, k=nr)
    jump_to("ioctl", cond=_BPF_JEQ_K, k=ioctl)
    code.append((_BPF_RET_K, 0, 0, _RET_ALLOW))
    labels["ioctl"] = len(code)
    code.append((_BPF_LD_W_ABS, 0, 0, _DATA_ARG1))  # the request: an unsigned int, its low word
    for request in _TERMINAL_INJECTION:
        jump_to("deny", cond=_BPF_JEQ_K, k=request)
    code.append((_BPF_RET_K, 0, 0, _RET_ALLOW))
    labels["own_pid"] = len(code)
    code.append((_BPF_LD_W_ABS, 0, 0, _DATA_ARG0))
    code.append((_BPF_JEQ_K, 0, 1, own_pid & 0xFFFFFFFF))
    code.append((_BPF_RET_K, 0, 0, _RET_ALLOW))
    labels["deny"] = len(code)
    code.append((_BPF_RET_K, 0, 0, _RET_EPERM))
    for at, label in fixups:
        op, _, _, k = code[at]
        code[at] = (op, labels[label] - at - 1, 0, k)  # taken: to the label; not taken: the next one
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in code)


def _deny_syscalls(libc: ctypes.CDLL, arch: str) -> None:
    program = _filter_program(arch, os.getpid())
    buf = ctypes.create_string_buffer(program, len(program))

    class _SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp filter")


def import_trees(keep_out: Path) -> list[Path]:
    """Where this interpreter imports from: its prefixes, the import path's folders (the libraries'
    code and shared objects, which a parser may still load lazily) and dnnq's own package folders,
    less any folder that holds ``keep_out`` (a checkout on the import path with its data folder inside)."""
    trees = {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    trees.update(Path(p) for p in sys.path if p)  # "" is the working directory: not a library folder
    for name, module in list(sys.modules.items()):  # an editable install maps dnnq's packages from its checkout
        if name == "dnnq" or name.startswith("dnnq."):
            trees.update(Path(entry) for entry in getattr(module, "__path__", None) or () if isinstance(entry, str))
    keep_out = keep_out.resolve()
    return sorted(t.resolve() for t in trees if t.is_absolute() and not keep_out.is_relative_to(t.resolve()))


def confine(read_files: Iterable[Path], keep_out: Path) -> dict[str, bool]:
    """Confine this process for good: it may then open only ``read_files`` (read) and the import
    trees (none that holds ``keep_out``, the data folder), and make no denied system call. What was
    applied: {"landlock": ..., "seccomp": ...}; a kernel without one of them skips it (see support());
    one that offers it but refuses raises ConfinementError."""
    libc = _libc()
    abi, arch = _landlock_abi(libc), _arch()
    seccomp = arch is not None and _seccomp_available(libc)
    if abi or seccomp:
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if abi:
        _restrict_files(libc, abi, list(read_files), import_trees(keep_out))
    if seccomp and arch is not None:  # after Landlock: the filter does not list its calls, but keep the order
        _deny_syscalls(libc, arch)
    return {"landlock": bool(abi), "seccomp": seccomp}
