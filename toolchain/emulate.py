"""Run an edge bundle on an emulated ARM64 Linux: proof that it works on the CPU phones and boards have.

    toolchain verify runs/minilm/bundle --emulate arm64      # make verify-arm64 BUNDLE=runs/minilm/bundle

QEMU's user-mode emulator (`qemu-aarch64-static`, Debian's qemu-user-static) runs an arm64 Python
from Debian's arm64 packages, with the aarch64 onnxruntime, tokenizers and numpy wheels from PyPI
(the versions this machine uses, so only the CPU differs). Two checks run there: the bundle's own
predict.py on the smoke texts, compared with the same predict.py run here on x86 (same labels or
tokens; logits within the bundle's tolerance), and the smoke test (`bundle_predict.smoke_check`, the
toolchain's copy of the code, never the bundle's) on model.onnx and model.ort against the outputs
stored when the bundle was made. The result goes into bundle.json and the manifest.

The arm64 root lives in ~/.cache/toolchain/emulate/arm64 ($TOOLCHAIN_CACHE), set up once (apt-get
download, pip download: needs the network once) and reused. Emulated timings say nothing about
an ARM chip's speed: none are measured, recorded or printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Literal

from .artifact import MANIFEST, PARTIAL_PREFIX, Artifact, Manifest, _replace_folder, _write_errors, sha256_file
from .assets import cache_dir
from .config import opt
from .errors import CheckFailed, MissingPackage, Unsupported

# The wheels the emulated Python gets: the same versions as here, so a difference is the CPU's, not a release's.
WHEELS = ("onnxruntime", "tokenizers", "numpy")
# pip takes --platform literally (no older manylinux tags implied): list what a glibc-2.36 aarch64 system accepts.
WHEEL_PLATFORMS = tuple(f"manylinux_2_{v}_aarch64" for v in (36, 35, 34, 31, 28, 27, 26, 24, 17)) + (
    "manylinux2014_aarch64",)
# What to keep of the arm64 Python's dependency closure: shared libraries and the interpreter, not dpkg/perl/tar.
KEEP_DEB = re.compile(r"^(lib|zlib|python3\.)")
# qemu-user shows the guest the host's /proc/cpuinfo (x86 here); onnxruntime's cpuinfo then dereferences
# NULL at import. QEMU looks absolute paths up under -L first, so each CPU gets a prefix with its own
# /proc/cpuinfo (an Arm one, matching the CPU qemu emulates) and links to the shared arm64 root.
CPUS = {
    # Arm Neoverse N1 (AWS Graviton2, Ampere Altra; the Cortex-A76 core of 2019-2021 phones): dot product.
    "neoverse-n1": ("0x3", "0xd0c", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                                    "asimdrdm lrcpc dcpop asimddp ssbs"),
    # Arm Cortex-A53 (the small core of most phones and of the Raspberry Pi 3): no dot product, so int8
    # runs another onnxruntime kernel.
    "cortex-a53": ("0x0", "0xd03", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
}
NOT_SPEED = "emulated: correctness only; an emulator's timings say nothing about an ARM chip's speed, so none are kept"


@dataclass(frozen=True)
class EmulateConfig:
    arch: Literal["arm64"] = opt("arm64", "The emulated CPU architecture: what phones and boards run.")
    # Sets the instructions onnxruntime may pick (CPUS).
    cpu: str = opt("neoverse-n1", "The Arm core qemu emulates.", choices=tuple(CPUS))
    # Correctness does not need more; the host is shared.
    threads: int = opt(1, "onnxruntime threads inside the emulator.")
    # An emulated import of onnxruntime alone takes seconds.
    timeout_s: int = opt(1800, "Seconds each emulated process may run.")

    def __post_init__(self):
        if self.arch != "arm64":
            raise ValueError(f"arch must be arm64, not {self.arch!r}")
        if self.cpu not in CPUS:
            raise ValueError(f"cpu must be one of {', '.join(CPUS)}, not {self.cpu!r}")
        if self.threads < 1 or self.timeout_s < 1:
            raise ValueError("threads and timeout_s must be >= 1")


# ---------------------------------------------------------------- the emulator and the arm64 root


def find_qemu() -> str:
    """The qemu-user binary for aarch64, or MissingPackage with the command that installs it."""
    for name in ("qemu-aarch64-static", "qemu-aarch64"):
        found = shutil.which(name)
        if found:
            return found
    raise MissingPackage("qemu-user for aarch64 is not installed (no qemu-aarch64-static or qemu-aarch64 on PATH)",
                         "apt-get install qemu-user-static (Debian/Ubuntu), then run the same command again")


def root_dir() -> Path:
    return cache_dir() / "emulate" / "arm64"


def wanted() -> dict:
    """What the arm64 root must hold: the wheel versions of this machine (the stamp it is checked against)."""
    return {"wheels": {name: version(name) for name in WHEELS}, "platforms": list(WHEEL_PLATFORMS)}


def ensure_root(setup: bool = True) -> dict:
    """The arm64 root's stamp, setting the root up first when it is missing or holds other versions.

    Idempotent: a second call only reads the stamp. Setting up writes into a hidden folder and renames
    it into place, so an interrupted setup leaves nothing that looks ready.
    """
    root, want = root_dir(), wanted()
    stamp = root / "ready.json"
    if stamp.is_file():
        ready = json.loads(stamp.read_text())
        if {k: ready.get(k) for k in want} == want:
            return ready
    if not setup:
        raise MissingPackage(f"no arm64 Python with onnxruntime {want['wheels']['onnxruntime']} in {root}",
                             "run toolchain verify BUNDLE --emulate arm64 once with network access (it sets it up)")
    tmp = root.parent / f"{PARTIAL_PREFIX}arm64-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _write_errors(tmp):
            tmp.mkdir(parents=True)
            python = _unpack_python(tmp / "sysroot", tmp / "debs")
            _install_wheels(tmp / "site", want["wheels"], python.removeprefix("python"))
            shutil.rmtree(tmp / "debs")
            ready = want | {"python": python, "set_up": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
            (tmp / "ready.json").write_text(json.dumps(ready, indent=2) + "\n")
            _replace_folder(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ready


def _run(cmd: list[str], what: str, fix: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise MissingPackage(f"{cmd[0]} not found: cannot {what}", fix) from None
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.startswith(("E:", "ERROR"))]
        last = (lines or (done.stderr.strip() or done.stdout.strip() or "no output").splitlines())[-1][:300]
        raise MissingPackage(f"could not {what}: {last}", fix)
    return done.stdout


APT_FIX = ("on Debian/Ubuntu, as root: dpkg --add-architecture arm64 && apt-get update "
           "(Ubuntu: arm64 packages come from ports.ubuntu.com), then run the same command again")


def _unpack_python(sysroot: Path, debs: Path) -> str:
    """Debian's arm64 python3 and the shared libraries it needs, unpacked (not installed) into `sysroot`."""
    out = _run(["apt-cache", "depends", "python3-minimal:arm64"], "find the arm64 python3 package", APT_FIX)
    found = re.search(r"Depends: (python3\.\d+)-minimal:arm64", out)
    if not found:
        raise MissingPackage("apt knows no arm64 python3-minimal", APT_FIX)
    py = found.group(1)
    out = _run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                "--no-breaks", "--no-replaces", "--no-enhances", f"{py}-minimal:arm64", f"lib{py}-stdlib:arm64",
                "libstdc++6:arm64", "libgcc-s1:arm64"], "list the arm64 Python's dependencies", APT_FIX)
    names = sorted({ln for ln in out.splitlines() if ln.endswith(":arm64") and KEEP_DEB.match(ln)})
    debs.mkdir(parents=True)
    _run(["apt-get", "download", *names], "download the arm64 Python packages", APT_FIX, cwd=debs)
    sysroot.mkdir(parents=True)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(sysroot)], f"unpack {deb.name}", "apt-get install dpkg")
    return py


def _install_wheels(site: Path, versions: dict[str, str], py: str) -> None:
    """The aarch64 wheels of `versions` for CPython `py` (e.g. 3.11), with their dependencies, into `site`."""
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(site), "--only-binary=:all:",
          *platforms, "--python-version", py, "--implementation", "cp",
          *(f"{n}=={v}" for n, v in versions.items())],
         "download the aarch64 wheels from PyPI",
         "check network access to PyPI; onnxruntime publishes aarch64 wheels for CPython 3.10-3.13")


def prefix_for(cpu: str, root: Path) -> Path:
    """The -L prefix for one emulated CPU: links to the shared arm64 root plus that CPU's /proc/cpuinfo."""
    prefix = root / f"cpu-{cpu}"
    if (prefix / "proc" / "cpuinfo").is_file():
        return prefix
    tmp = root / f"{PARTIAL_PREFIX}cpu-{cpu}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "proc").mkdir(parents=True)
    for entry in (root / "sysroot").iterdir():
        (tmp / entry.name).symlink_to(Path("..") / "sysroot" / entry.name)
    (tmp / "proc" / "cpuinfo").write_text(cpuinfo(cpu))
    try:
        os.rename(tmp, prefix)
    except OSError:  # another run made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return prefix


def cpuinfo(cpu: str, cores: int = 2) -> str:
    """An arm64 Linux /proc/cpuinfo for `cpu` (what the kernel of such a machine shows)."""
    variant, part, features = CPUS[cpu]
    block = ("processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {f}\nCPU implementer\t: 0x41\n"
             "CPU architecture: 8\nCPU variant\t: {v}\nCPU part\t: {p}\nCPU revision\t: 1\n\n")
    return "".join(block.format(i=i, f=features, v=variant, p=part) for i in range(cores))


def emulated_command(qemu: str, prefix: Path, python: str, args: list[str], cpu: str,
                     threads: int) -> tuple[list, dict]:
    """The command line and environment that run `python args...` as arm64 under qemu.

    The environment is built from nothing: the host's PYTHONPATH or site-packages (x86 wheels) must
    never reach the guest, which sees only the arm64 root and its wheels.
    """
    site = prefix.parent / "site"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": str(threads),
           "OMP_NUM_THREADS": str(threads), "LANG": "C.UTF-8"}
    return [qemu, "-cpu", cpu, "-L", str(prefix), str(prefix / "usr" / "bin" / python), *args], env


# ---------------------------------------------------------------- running a bundle there and here


# Run inside the guest by `python -c`: the toolchain's own bundle_predict (copied beside the guest's wheels,
# never the bundle's predict.py) checks model.onnx / model.ort against bundle.json's stored outputs.
SMOKE_CODE = ("import json, platform, sys; sys.path.insert(0, sys.argv[1]); import toolchain_smoke as b; "
              "import numpy, onnxruntime, tokenizers; r = b.smoke_check(sys.argv[2], threads=int(sys.argv[3])); "
              "r['platform'] = {'machine': platform.machine(), 'python': platform.python_version(), "
              "'onnxruntime': onnxruntime.__version__, 'tokenizers': tokenizers.__version__, "
              "'numpy': numpy.__version__}; print(json.dumps(r))")


def predict_args(bundle: Path, info: dict, threads: int) -> list[str]:
    """The bundle's own predict.py on its smoke texts, JSON out (a causal LM continues the first text)."""
    texts = info["smoke"]["texts"]
    if info["task"] == "text-generation":
        return [str(bundle / "predict.py"), "--json", "--threads", str(threads), "--tokens",
                str(len(info["smoke"]["token_ids"])), texts[0]]
    return [str(bundle / "predict.py"), "--json", "--threads", str(threads), *texts]


def _json_run(cmd: list[str], env: dict | None, where: str, timeout: int):
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{where}: no answer within {timeout} s",
                          "retry on a less busy machine, or raise EmulateConfig.timeout_s") from None
    if done.returncode != 0:
        tail = [ln for ln in done.stderr.strip().splitlines() if ln.strip()][-1:] or [f"exit code {done.returncode}"]
        raise CheckFailed(f"{where} failed: {tail[0][:300]}",
                          "run the same command there by hand to see the whole error")
    return json.loads(done.stdout)


def compare_predictions(task: str, host: list[dict], guest: list[dict], atol: float) -> dict:
    """The guest's predict.py output against the host's: same labels (tokens), logits within `atol`."""
    if task == "text-classification":
        same = [h["label"] == g["label"] for h, g in zip(host, guest)]
        diff = max(abs(a - b) for h, g in zip(host, guest) for a, b in zip(h["logits"], g["logits"]))
        problem = ("" if all(same) and len(host) == len(guest) else
                   f"labels differ on {same.count(False)} of {len(host)} texts") or (
                   f"logits differ by {diff:.3g} (atol {atol:g})" if not diff <= atol else "")
        return {"ok": not problem, "problem": problem, "labels_match": sum(same), "texts": len(host),
                "max_abs_diff": diff, "labels": [g["label"] for g in guest]}
    if task == "text-generation":
        same = host[0]["token_ids"] == guest[0]["token_ids"]
        return {"ok": same, "problem": "" if same else "greedy tokens differ", "tokens_match": same,
                "token_ids": guest[0]["token_ids"]}
    diff = max(abs(a - b) for h, g in zip(host, guest) for a, b in zip(h["embedding"], g["embedding"]))
    return {"ok": diff <= atol, "problem": "" if diff <= atol else f"embeddings differ by {diff:.3g} (atol {atol:g})",
            "max_abs_diff": diff}


def emulate(bundle: str | Path, cfg: EmulateConfig, setup: bool = True) -> dict:
    """Run the bundle's predict.py and the smoke test on emulated arm64; compare with x86; record the result.

    Raises MissingPackage (exit 11) when qemu or the arm64 root is missing and cannot be set up, CheckFailed
    (exit 7) after recording a result that disagrees. Returns the recorded result.
    """
    from . import bundle_predict
    from .package import is_bundle

    bundle = Path(bundle)
    if not is_bundle(bundle):
        raise Unsupported(f"{bundle} is not an edge bundle: emulation runs a bundle's predict.py",
                          "package the artifact first (toolchain package ARTIFACT OUT), "
                          "then toolchain verify OUT --emulate arm64")
    info = json.loads((bundle / "bundle.json").read_text())
    qemu = find_qemu()
    ready = ensure_root(setup)
    root = root_dir()
    prefix = prefix_for(cfg.cpu, root)
    shutil.copy2(bundle_predict.__file__, root / "site" / "toolchain_smoke.py")
    atol = info["smoke"]["atol"]
    where = f"arm64 under {Path(qemu).name}"
    args = predict_args(bundle.resolve(), info, cfg.threads)
    host = _json_run([sys.executable, *args], os.environ | {"TOKENIZERS_PARALLELISM": "false"},
                     "predict.py here (x86)", cfg.timeout_s)
    cmd, env = emulated_command(qemu, prefix, ready["python"], args, cfg.cpu, cfg.threads)
    guest = _json_run(cmd, env, f"predict.py on {where}", cfg.timeout_s)
    cmd, env = emulated_command(qemu, prefix, ready["python"], ["-c", SMOKE_CODE, str(root / "site"),
                                                                str(bundle.resolve()), str(cfg.threads)],
                                cfg.cpu, cfg.threads)
    smoke = _json_run(cmd, env, f"the smoke test on {where}", cfg.timeout_s)
    result = result_record(qemu, cfg, ready, smoke, compare_predictions(info["task"], host, guest, atol), atol)
    record(bundle, result)
    if not result["ok"]:
        raise CheckFailed(f"{bundle} on emulated arm64: {result['problem']}",
                          "do not ship it for ARM; rebuild with --target arm64, or check the int8 format")
    return result


def qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    found = re.search(r"version (\S+)", out)
    return found.group(1) if found else "unknown"


def result_record(qemu: str, cfg: EmulateConfig, ready: dict, smoke: dict, predict: dict, atol: float) -> dict:
    """What bundle.json keeps of one emulated check: versions, verdicts and differences, never a time."""
    problem = predict["problem"] or smoke["problem"]
    return {"ok": predict["ok"] and smoke["ok"], "problem": problem, "arch": cfg.arch, "cpu": cfg.cpu,
            "emulator": f"{Path(qemu).name} {qemu_version(qemu)} (user mode)", "guest": smoke.get("platform", {}),
            "sysroot": {"python": ready["python"], "from": "Debian arm64 packages + PyPI aarch64 wheels"},
            "predict_py": predict, "smoke": {"models": smoke["models"], "ok": smoke["ok"]}, "atol": atol,
            "checked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "note": NOT_SPEED}


def record(bundle: Path, result: dict) -> None:
    """Store `result` in bundle.json (`emulation.<arch>.<cpu>`) and the manifest, with every hash kept valid.

    Atomic like every artifact write: a hidden copy of the folder (hard links for the unchanged files)
    gets the new bundle.json and manifest, then replaces the bundle in two renames.
    """
    art = Artifact.load(bundle, verify=True)
    info = json.loads((bundle / "bundle.json").read_text())
    info.setdefault("emulation", {}).setdefault(result["arch"], {})[result["cpu"]] = result  # one verdict per core
    tmp = bundle.parent / f"{PARTIAL_PREFIX}{bundle.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _write_errors(bundle):
            for src in sorted(bundle.rglob("*")):
                dst = tmp / src.relative_to(bundle)
                if src.is_dir():
                    dst.mkdir(parents=True, exist_ok=True)
                elif src.name not in ("bundle.json", MANIFEST):
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    _link_or_copy(src, dst)
            (tmp / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
            manifest = Manifest.from_json(art.manifest.to_json())
            manifest.files["bundle.json"] = sha256_file(tmp / "bundle.json")
            manifest.results[f"emulate/{result['arch']}/{result['cpu']}"] = {
                k: result[k] for k in ("ok", "problem", "emulator", "checked", "note")}
            (tmp / MANIFEST).write_text(manifest.to_json())
            _replace_folder(tmp, bundle)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the new folder shares the unchanged files: nothing large is copied
    except OSError:
        shutil.copy2(src, dst)
