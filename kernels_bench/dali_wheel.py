"""DALI for a GPU machine with no package registry: the wheel downloaded here, carried in parts, installed there.

The GPU machine takes at most 64 MiB of working tree per call and cannot reach a registry; nvidia-dali-cuda130 for
cp312 is ~190 MiB. So, here:
  python -m kernels_bench.dali_wheel download            # pip download DALI + its import-time needs into .dali_wheel/download
  python -m kernels_bench.dali_wheel split WHEEL [DEP...] # parts of <= 56 MiB with sha256 into .dali_wheel/partK/
(`download` runs `split` itself). `.dali_wheel/` is ignored through .git/info/exclude, never committed. Each call of the
plan carries one part folder (`carry: [".dali_wheel/partK"]`), and there `gpu_check.sh` runs
  python3 -m kernels_bench.dali_wheel install --carried .dali_wheel --store /tmp/fasttrain_dali
which stashes the carried part under /tmp (the next call replaces the carried folder, a warm machine keeps /tmp) and,
once every part is there, reassembles the wheel, checks each part's and the whole wheel's sha256 against the
manifest, runs `pip install --no-index --no-deps --target STORE/site` and imports it from there in a child process.
A fresh machine has lost the stashed parts: the plan starts over (kernels_bench/RESULTS.md, "GPU plan").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fasttrain.atomic import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / ".dali_wheel"
PACKAGE = "nvidia-dali-cuda130"
VERSION = "2.4.0"
# what `import nvidia.dali` and fasttrain's DALI graphs import beyond the GPU machine's own packages (measured here
# from sys.modules after building every graph; six, packaging and numpy are on that machine already)
IMPORT_DEPS = ("astunparse==1.6.3", "gast==0.7.0", "optree==0.20.0")
PART_MIB = 56.0  # 64 MiB per call, less the working tree (~2 MiB) and headroom
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
INSTALLED_MARK = ".installed.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split(wheel: Path, deps: list[Path], out: Path, part_mib: float = PART_MIB) -> dict:
    """Cut `wheel` into equal parts of at most `part_mib` MiB, one folder `out/partK` each holding its part, the
    manifest (names, sizes and sha256 of the parts and of the whole) and the small dependency wheels."""
    size = wheel.stat().st_size
    count = max(1, math.ceil(size / (part_mib * 2**20)))
    part_size = math.ceil(size / count)
    for old in out.glob("part*"):
        shutil.rmtree(old)
    parts = []
    with open(wheel, "rb") as f:
        for k in range(1, count + 1):
            name = f"{wheel.name}.part{k}-of-{count}"
            folder = out / f"part{k}"
            folder.mkdir(parents=True, exist_ok=True)
            data = f.read(part_size)
            (folder / name).write_bytes(data)
            parts.append({"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"wheel": wheel.name, "size": size, "sha256": sha256_of(wheel), "parts": parts,
                "deps": [{"name": d.name, "sha256": sha256_of(d)} for d in deps], "part_mib": part_mib}
    for k in range(1, count + 1):
        folder = out / f"part{k}"
        atomic_write_json(folder / "manifest.json", manifest)
        for dep in deps:
            shutil.copy2(dep, folder / dep.name)
    return manifest


def reassemble(store: Path, manifest: dict) -> Path:
    """The wheel rebuilt from its parts in `store/parts`, each part and the whole checked against the manifest."""
    wheel = store / manifest["wheel"]
    partial = wheel.with_name(wheel.name + ".partial")
    with open(partial, "wb") as f:
        for part in manifest["parts"]:
            data = (store / "parts" / part["name"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != part["sha256"]:
                raise ValueError(f"part {part['name']} does not match its sha256 in the manifest")
            f.write(data)
    if sha256_of(partial) != manifest["sha256"]:
        partial.unlink()
        raise ValueError(f"reassembled {manifest['wheel']} does not match its sha256 in the manifest")
    os.replace(partial, wheel)
    return wheel


def stash(carried: Path, store: Path) -> dict | None:
    """Copy every carried part (and the manifest, the dependency wheels) into `store`; the manifest, or None."""
    manifest = None
    (store / "parts").mkdir(parents=True, exist_ok=True)
    for folder in sorted(carried.glob("part*")):
        if not (folder / "manifest.json").exists():
            continue
        manifest = json.loads((folder / "manifest.json").read_text())
        shutil.copy2(folder / "manifest.json", store / "manifest.json")
        for item in folder.iterdir():
            if item.name != "manifest.json" and not (store / "parts" / item.name).exists():
                shutil.copy2(item, store / "parts" / item.name)
    if manifest is None and (store / "manifest.json").exists():
        manifest = json.loads((store / "manifest.json").read_text())
    return manifest


def install(carried: Path, store: Path, import_name: str = "nvidia.dali") -> dict:
    """Stash the carried parts; when all are there, reassemble, check, pip install --target STORE/site, import it."""
    started = time.time()
    manifest = stash(carried, store)
    site = store / "site"
    record: dict = {"store": str(store), "site": str(site), "parts_total": None, "parts_present": 0,
                    "installed": False, "importable": False, "dali_version": None}
    if manifest is None:
        return {**record, "reason": f"no part folder (partK/manifest.json) under {carried} nor a stashed manifest"}
    present = [p["name"] for p in manifest["parts"] if (store / "parts" / p["name"]).exists()]
    record.update(parts_total=len(manifest["parts"]), parts_present=len(present), wheel=manifest["wheel"])
    if (site / INSTALLED_MARK).exists():
        record.update(installed=True, reason="installed by an earlier call on this machine")
    elif len(present) < len(manifest["parts"]):
        return {**record, "reason": f"{len(present)} of {len(manifest['parts'])} parts here; the rest come with later calls",
                "seconds": round(time.time() - started, 1)}
    else:
        wheel = reassemble(store, manifest)
        deps = [store / "parts" / d["name"] for d in manifest["deps"]]
        for dep, expected in zip(deps, manifest["deps"]):
            if sha256_of(dep) != expected["sha256"]:
                raise ValueError(f"{dep.name} does not match its sha256 in the manifest")
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                              "--no-cache-dir", "--upgrade", "--target", str(site), str(wheel), *map(str, deps)],
                             capture_output=True, text=True, env={**os.environ, "PIP_NO_INDEX": "1"})
        if pip.returncode != 0:
            return {**record, "reason": f"pip install failed: {pip.stderr.strip()[-500:]}"}
        atomic_write_json(site / INSTALLED_MARK, {"wheel": manifest["wheel"], "sha256": manifest["sha256"]})
        record["installed"] = True
        wheel.unlink()  # the installed tree is what counts; the parts stay for a reinstall
    probe = subprocess.run([sys.executable, "-c", f"import {import_name} as m; print(getattr(m, '__version__', 'unknown'))"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                               filter(None, [str(site), os.environ.get("PYTHONPATH")]))})
    record["importable"] = probe.returncode == 0
    record["dali_version"] = probe.stdout.strip() if probe.returncode == 0 else None
    if probe.returncode != 0:
        record["reason"] = f"import {import_name} failed: {probe.stderr.strip().splitlines()[-1][:300] if probe.stderr.strip() else ''}"
    record["seconds"] = round(time.time() - started, 1)
    return record


def download(dest: Path, out: Path, version: str = VERSION, part_mib: float = PART_MIB) -> dict:
    """pip download the cp312 manylinux x86_64 DALI wheel and its import-time needs, then split it into parts."""
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", *platforms, "-d", str(dest), f"{PACKAGE}=={version}", *IMPORT_DEPS]
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    wheels = sorted(dest.glob("*.whl"))
    dali = [w for w in wheels if w.name.startswith(PACKAGE.replace("-", "_"))]
    if len(dali) != 1:
        raise SystemExit(f"expected one {PACKAGE} wheel in {dest}, found {[w.name for w in dali]}")
    return split(dali[0], [w for w in wheels if w not in dali], out, part_mib)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels_bench.dali_wheel", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="pip download DALI (cp312, manylinux x86_64) and its needs, then split")
    get.add_argument("--out", type=Path, default=DEFAULT_DIR)
    get.add_argument("--version", default=VERSION)
    get.add_argument("--part-mib", type=float, default=PART_MIB)
    cut = commands.add_parser("split", help="split a wheel into parts with sha256 (dependency wheels ride along)")
    cut.add_argument("wheel", type=Path)
    cut.add_argument("deps", type=Path, nargs="*")
    cut.add_argument("--out", type=Path, default=DEFAULT_DIR)
    cut.add_argument("--part-mib", type=float, default=PART_MIB)
    put = commands.add_parser("install", help="on the GPU machine: stash carried parts; once complete, install and import")
    put.add_argument("--carried", type=Path, default=DEFAULT_DIR)
    put.add_argument("--store", type=Path, default=Path("/tmp/fasttrain_dali"))
    put.add_argument("--import-name", default="nvidia.dali")
    put.add_argument("--json", type=Path, default=None, help="write the record here")
    put.add_argument("--require", action="store_true", help="exit 1 unless the package is installed and importable")
    args = parser.parse_args(argv)
    if args.command == "download":
        manifest = download(args.out / "download", args.out, args.version, args.part_mib)
    elif args.command == "split":
        manifest = split(args.wheel, args.deps, args.out, args.part_mib)
    else:
        record = install(args.carried, args.store, args.import_name)
        if args.json:
            atomic_write_json(args.json, record)
        print(json.dumps(record, indent=2))
        return 1 if args.require and not record["importable"] else 0
    print(f"{manifest['wheel']}: {manifest['size'] / 2**20:.1f} MiB, sha256 {manifest['sha256']}; "
          f"{len(manifest['parts'])} parts of <= {args.part_mib:g} MiB in {args.out}/part1..{len(manifest['parts'])}; "
          f"deps: {', '.join(d['name'] for d in manifest['deps']) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
