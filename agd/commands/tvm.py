"""``agd compile``: a derived generator compiled with TVM for a target, tuned, checked against PyTorch and
timed against eager (the work is in :mod:`agd.tuning.artifact`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agd.arch import Genotype
from agd.commands.options import Size, default_database, echo_err, parse_size, tvm_bound
from agd.io import AgdError
from agd.machine import PRECISIONS, require_precision
from agd.tuning import DEFAULT_TRIALS
from agd.tuning.calibration import network_inputs
from agd.tuning.quiet import quiet_native_logs
from agd.tuning.targets import resolve_target

app = typer.Typer()


@app.command("compile")
def compile_cmd(
    genotype: Path = typer.Argument(..., help="A genotype JSON file (see examples/)."),
    target: str = typer.Option(..., "--target", help="x86, arm64, cuda or rpc://HOST:PORT/KEY."),
    output: Path = typer.Option(..., "--output", help="Artifact folder (model.so, params.bin, manifest.json)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="State dict of the derived generator; "
                                           "without it a seeded random init is used (latency work) and the manifest says so."),
    trials: int = typer.Option(DEFAULT_TRIALS, "--trials", min=0, help="MetaSchedule trials for this model: the default "
                               "tunes within about 10 minutes on 2 cores, reusing the database (a second compile of "
                               "the same network spends none); 0 builds untuned and says how much slower than eager."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or int8 (post-training quantization: "
                                  "activations per tensor, s8 weights per channel; x86 AVX512-VNNI, or aarch64 sdot "
                                  "through rpc:// with --trials 0)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="int8: folder of training images to "
                                              "calibrate on, or 'builtin' (agd's built-in training samples)."),
    quality_images: str = typer.Option("builtin", "--quality-images", help="int8: folder of held-out images for the "
                                       "quality check, or 'builtin' (the built-in held-out samples)."),
    min_psnr: float = typer.Option(40.0, "--min-psnr", help="int8: least PSNR (dB) of the build to the fp32 "
                                   "network on the held-out images; a build under it is refused."),
    size: Size = None,
    database: Optional[Path] = typer.Option(None, help="Tuning database folder (default tvm-db/<target>)."),
    atol: float = typer.Option(1e-4, help="Numerical check (fp32): max |TVM - PyTorch| allowed."),
    cuda_arch: Optional[str] = typer.Option(None, help="CUDA arch for --target cuda, e.g. sm_90."),
    emulated: bool = typer.Option(False, help="The RPC device is emulated (qemu): label its timings so."),
) -> None:
    """Compile a derived generator with TVM for a target, tuned, checked against PyTorch and timed against eager."""
    artifact = tvm_bound("agd.tuning.artifact")
    if precision not in PRECISIONS:
        raise AgdError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    spec = resolve_target(target, cuda_arch=cuda_arch)
    if spec.runs_on_this_cpu:  # the build runs on this CPU: it must have the precision's instructions
        require_precision(precision)
    db = database or default_database(spec.name)
    hw = parse_size(size)
    calib: tuple = ()
    held: tuple = ()
    if precision == "int8":
        if calibration is None:
            raise AgdError("--precision int8: no calibration images (give --calibration DIR, or --calibration builtin "
                           "for agd's built-in training samples)")
        g = Genotype.load(genotype)
        in_hw = hw or g.config.reference_size
        calib = network_inputs(calibration, in_hw, g.config.scale, n=8)
        held = network_inputs(quality_images, in_hw, g.config.scale, n=4, held_out=True, seed=1)
    cfg = artifact.CompileConfig(size=hw, trials=trials, database=db, atol=atol, emulated=emulated, precision=precision,
                        calibration=calib, quality_inputs=held, min_psnr_db=min_psnr)
    with quiet_native_logs() as quiet:
        m = artifact.compile_genotype(genotype, spec, output, cfg, weights)
    if quiet.summary():
        echo_err(quiet.summary())
    lat = f"{m['latency_ms']:.3f} ms{' (EMULATED, not device speed)' if m['latency_emulated'] else ''}"
    err = f"max abs error {m['max_abs_error']:.2e}"
    if m["quality"]:
        err += f", {m['quality']['psnr_to_fp32_db']:.1f} dB to fp32 on {m['quality']['images']} held-out images"
    typer.echo(f"wrote {output}: target {spec.name}, {m['precision']}, input {'x'.join(map(str, m['input_shape']))}, "
               f"{'tuned' if m['tuning']['tuned'] else 'untuned'}, latency {lat}, {err}")
    v = m["vs_eager"]
    if v["compared"]:
        typer.echo(f"against eager PyTorch here ({v['threads']} threads, {v['method']}): TVM {v['tvm_ms']:.2f} ms, eager "
                   f"{v['eager_ms']:.2f} ms, {v['speedup']:.2f}x")
        if v["slower_than_eager"]:
            hint = (f"tune it: --trials {DEFAULT_TRIALS}" if not m["tuning"]["tuned"]
                    else "more --trials, or --precision int8; `agd bench deploy` compares the runtimes")
            echo_err(f"warning: this artifact is {1 / v['speedup']:.1f}x SLOWER than eager PyTorch on this machine "
                  f"({v['tvm_ms']:.1f} vs {v['eager_ms']:.1f} ms; recorded in its manifest); {hint}")
    else:
        typer.echo(f"not compared with eager PyTorch: {v['why']}")
