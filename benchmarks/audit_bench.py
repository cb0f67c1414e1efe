"""Speed and memory of the dataset audit: the per-image audit before batching, the batched one, Ray.

    python -m benchmarks.audit_bench [--count 500] [--steps 16] [--methods gradcam,gradcam++]
                                     [--batch-size 8] [--workers 2] [--only per-image,batched,ray]
                                     [--rounds 2] [--memory-count 1000] [--keep DIR] [--json FILE]

Generates ``--count`` images (augmented copies of assets/samples: random crops, flips, colour
jitter; seeded) into a temporary folder, then runs, one after the other in this one run, each
as its own `python -m explainers.audit` process on the same folder and arguments:

- per-image: the audit as it was before batching (``--baseline-ref``, taken from git with
  `git archive`), which explains and scores one image at a time;
- batched: this checkout's audit, in-process (``--batch-size``);
- ray: this checkout's audit with ``--engine ray --workers N`` on a local Ray.

For each: images/s over the audit itself (from its first to its last progress line, so model
loading before the first line is left out; Ray's start-up and its actors' model loading come
after it and count), the wall time of the whole command, and the peak resident memory of its
process tree (sampled every 0.2 s; the sum over processes, so pages that processes share count
once per process). Ratios are against per-image. Then, with ``--memory-count``, a batched audit
of that many images samples the process's resident memory over the run: flat memory means the
last samples are not above the first ones after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "assets" / "samples"
BASELINE_REF = "9de7ddf"
BOX = "56,56,168,168"  # the central quarter of a 224 x 224 input: each image's box  # the last commit whose audit explained one image at a time


def generate(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEGs: a random crop (50-100 % of each side), a mirror half the time, and
    brightness, contrast and saturation each scaled by 0.7-1.3, of a random bundled sample; and
    next to the folder groups.csv: each image's source sample as its group, and a central box."""
    rng = random.Random(seed)
    paths = sorted(SAMPLES.glob("*.jpg"))
    samples = [Image.open(p).convert("RGB") for p in paths]
    sources = [p.stem for p in paths]
    rows = ["image,source,x0,y0,x1,y1"]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        original = image = rng.choice(samples)
        width, height = image.size
        w, h = int(width * rng.uniform(0.5, 1)), int(height * rng.uniform(0.5, 1))
        x, y = rng.randint(0, width - w), rng.randint(0, height - h)
        image = image.crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhance(image).enhance(rng.uniform(0.7, 1.3))
        image.save(folder / f"aug{i:05d}.jpg", quality=90)
        rows.append(f"aug{i:05d}.jpg,{sources[samples.index(original)]},{BOX}")
    (folder.parent / "groups.csv").write_text("\n".join(rows) + "\n")


def baseline_checkout(ref: str, into: Path) -> Path:
    """The code of ``ref`` (explainers, models_zoo, assets) unpacked into ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", ref, "explainers", "models_zoo", "assets"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss.get(current, 0)
        todo += children.get(current, [])
    return total


def run_audit(command: list[str], cwd: Path, env: dict[str, str]) -> dict:
    """Run one audit command; its progress lines (timed), memory samples and wall time."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    progress: list[tuple[float, int]] = []  # (seconds since start, images done)
    samples: list[tuple[float, int, int]] = []  # (seconds, images done, tree RSS bytes)
    errors: list[str] = []

    def read() -> None:
        for line in process.stderr:
            match = re.match(r"\[[#-]+\] (\d+)/\d+", line)
            if match:
                progress.append((time.perf_counter() - start, int(match.group(1))))
            else:
                errors.append(line.rstrip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while process.poll() is None:
        done = progress[-1][1] if progress else -1  # -1: before the audit's first progress line
        samples.append((time.perf_counter() - start, done, tree_rss(process.pid)))
        time.sleep(0.2)
    reader.join()
    wall = time.perf_counter() - start
    stdout = process.stdout.read()
    if process.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({process.returncode}): {' | '.join(errors[-5:])} {stdout}"
        )
    (t0, first), (t1, last) = progress[0], progress[-1]
    return {
        "images": last - first,
        "images_per_s": (last - first) / (t1 - t0),
        "audit_s": t1 - t0,
        "wall_s": wall,
        "peak_rss_mb": max(s[2] for s in samples) / 2**20 if samples else float("nan"),
        "samples": samples,
    }


def audit_command(folder: Path, out: Path, args: argparse.Namespace, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "explainers.audit", str(folder), "--model", args.model]
    command += ["--methods", args.methods, "--steps", str(args.steps), "--out", str(out), *extra]
    return command


def memory_curve(
    samples: list[tuple[float, int, int]], total: int, points: int = 10
) -> list[tuple[int, float]]:
    """Resident memory (MB) when 0, 10, ..., 100 % of the images were done."""
    curve = []
    for k in range(points + 1):
        wanted = total * k // points
        at = [s for s in samples if s[1] >= wanted]
        if at:
            curve.append((at[0][1], at[0][2] / 2**20))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="images to generate (default 500)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--methods", default="gradcam,gradcam++")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="per-image,batched,ray", help="comma-separated engines to run")
    parser.add_argument("--baseline-ref", default=BASELINE_REF, help="git ref of the per-image audit")
    parser.add_argument(
        "--memory-count", type=int, default=0, help="also a batched audit of this many images"
    )
    parser.add_argument("--memory-steps", type=int, help="--steps of the memory run (default: --steps)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each engine, in alternating order")
    parser.add_argument("--keep", help="copy the first batched run folder (report, CSVs) here")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    engines = [e.strip() for e in args.only.split(",") if e.strip()]

    import torch

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(
        f"device: {device}; {args.model}, methods {args.methods}, steps {args.steps}, {args.count} images, "
        f"{args.rounds} round(s); OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', '(unset)')}"
    )
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as temporary:
        work = Path(temporary)
        generate(work / "images", args.count)
        baseline = baseline_checkout(args.baseline_ref, work / "baseline") if "per-image" in engines else None
        groups = ["--groups", str(work / "groups.csv"), "--group-by", "source"]
        batched = ["--batch-size", str(args.batch_size), *groups]
        commands = {
            # The audit before batching had no --groups: the same box for every image instead.
            "per-image": (["--box", BOX], baseline, {**env, "PYTHONPATH": str(baseline)}),
            "batched": (batched, ROOT, env),
            "ray": ([*batched, "--engine", "ray", "--workers", str(args.workers)], ROOT, env),
        }
        runs: dict[str, list[dict]] = {name: [] for name in engines}
        for round_ in range(args.rounds):  # ABC, CBA, ...: a drifting load biases no engine
            for name in engines if round_ % 2 == 0 else engines[::-1]:
                extra, cwd, environment = commands[name]
                out = work / f"out-{name}-{round_}"
                runs[name].append(
                    run_audit(audit_command(work / "images", out, args, *extra), cwd, environment)
                )
                if args.keep and name == "batched" and round_ == 0:
                    shutil.copytree(out / "images", Path(args.keep), dirs_exist_ok=True)
                shutil.rmtree(out)
        for name, done in runs.items():
            images, seconds = sum(r["images"] for r in done), sum(r["audit_s"] for r in done)
            results[name] = {
                "images": images,
                "images_per_s": images / seconds,
                "audit_s": seconds,
                "wall_s": sum(r["wall_s"] for r in done),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in done),
            }
        base = results.get("per-image", {}).get("images_per_s")
        print(
            f"\n| {'audit':<10} | {'images/s':>9} | {'x per-image':>11} | {'audit s':>8} | {'wall s':>7} | {'peak RSS MB':>11} |"
        )
        print(f"|{'-' * 12}|{'-' * 11}|{'-' * 13}|{'-' * 10}|{'-' * 9}|{'-' * 13}|")
        for name, r in results.items():
            ratio = f"{r['images_per_s'] / base:.2f}" if base else ""
            print(
                f"| {name:<10} | {r['images_per_s']:>9.3f} | {ratio:>11} | {r['audit_s']:>8.1f} | "
                f"{r['wall_s']:>7.1f} | {r['peak_rss_mb']:>11.0f} |"
            )

        if args.memory_count:
            shutil.rmtree(work / "images")
            generate(work / "images", args.memory_count, seed=1)
            steps = args.memory_steps if args.memory_steps is not None else args.steps
            memory_args = argparse.Namespace(**{**vars(args), "steps": steps})
            command = audit_command(
                work / "images", work / "out-memory", memory_args, "--batch-size", str(args.batch_size)
            )
            memory = run_audit(command, ROOT, env)
            curve = memory_curve(memory["samples"], args.memory_count)
            print(
                f"\nmemory over a batched audit of {args.memory_count} images (steps {steps}): "
                f"{memory['images_per_s']:.3f} images/s, peak {memory['peak_rss_mb']:.0f} MB"
            )
            print("| images done | RSS MB |\n|---|---|")
            for done, mb in curve:
                print(f"| {done} | {mb:.0f} |")
            results["memory"] = {**memory, "curve": curve}
    if args.json:
        for r in results.values():
            r.pop("samples", None)
        Path(args.json).write_text(
            json.dumps({"device": device, "args": vars(args), "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
