"""``agd apply``: a trained student (genotype + weights) over a folder, tile by tile, and its user errors."""

import json
import random

import pytest
import torch
from cli_helpers import random_images as _images
from cli_helpers import run_cli

from agd.arch import Genotype, random_genotype
from agd.arch.student import Student, save_weights
from agd.data.images import read_image, to_uint8, write_image
from agd.jobs.apply import apply_student, load_applicable_student
from agd.space import SearchSpace, get_config

_run = run_cli


def _student(tmp_path, space: str, seed: int = 0):
    """A tiny random student saved as genotype + weights (the weights as agd train writes them)."""
    g = random_genotype(SearchSpace(get_config(space)), random.Random(seed))
    torch.manual_seed(seed + 1)
    s = Student(g)
    gp = g.save(tmp_path / f"{space}-{seed}.json")
    wp = save_weights(s.net, tmp_path / f"{space}-{seed}.safetensors", {"genotype": g.to_json()})
    return gp, wp


@pytest.mark.parametrize("space", ["sr-tiny", "translation-tiny"])
def test_apply_writes_one_png_per_image(tmp_path, capsys, space):
    gp, wp = _student(tmp_path, space)
    inp = _images(tmp_path / "in", [(40, 36), (23, 31)])
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "apply", gp, inp, out, "--weights", wp, "--tile", "16", "--overlap", "4")
    assert code == 0, err
    k = 4 if space == "sr-tiny" else 1
    assert read_image(out / "im0.png").shape == (3, 40 * k, 36 * k)
    assert read_image(out / "im1.png").shape == (3, 23 * k, 31 * k)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    if space == "translation-tiny":
        assert "normalised on its own" in " ".join(stdout.split())  # tiles smaller than the image are pointed out
        # the default tile runs these images in one pass: exactly the whole-image student
        code, stdout, err = _run(capsys, "apply", gp, inp, tmp_path / "whole", "--weights", wp)
        assert code == 0, err
        assert "normalised" not in stdout
        student = load_applicable_student(gp, wp)
        with torch.inference_mode():
            ref = student(read_image(inp / "im0.png")[None])[0]
        got = torch.from_numpy(to_uint8(read_image(tmp_path / "whole/im0.png")).astype("int16"))
        assert (got - torch.from_numpy(to_uint8(ref).astype("int16"))).abs().max() <= 1


def test_sr_tiles_equal_the_whole_image(tmp_path, capsys):
    """Tiles with an overlap of 4x the receptive-field radius blend to the untiled output exactly."""
    gp, wp = _student(tmp_path, "sr-tiny")
    student = load_applicable_student(gp, wp)
    img = torch.rand(1, 3, 97, 83, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = student(img)
    tiles = []
    tiled = apply_student(student, img, tile=64, overlap=30, progress=lambda d, t: tiles.append(t))
    assert tiles[-1] == 4  # really tiled: 2 x 2 tiles
    assert tiled.shape == whole.shape == (1, 3, 388, 332)
    assert (tiled - whole).abs().max().item() < 1e-5
    # through the command: the 8-bit PNG is the rounded whole-image output (within one level)
    write_image(tmp_path / "in/big.png", img[0])
    img8 = read_image(tmp_path / "in/big.png")[None]  # what the command reads (8-bit)
    code, _, err = _run(capsys, "apply", gp, tmp_path / "in", tmp_path / "out", "--weights", wp,
                        "--tile", "64", "--overlap", "30")
    assert code == 0, err
    with torch.inference_mode():
        ref = torch.from_numpy(to_uint8(student(img8)[0]).astype("int16"))
    got = torch.from_numpy(to_uint8(read_image(tmp_path / "out/big.png")).astype("int16"))
    assert (got - ref).abs().max().item() <= 1


def test_apply_user_errors(tmp_path, capsys):
    gp, wp = _student(tmp_path, "sr-tiny")
    inp = _images(tmp_path / "in", [(20, 18)])
    out = tmp_path / "out"

    def err_of(*args):
        code, _, err = _run(capsys, "apply", *args)
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 or "--weights" in err, err
        return err

    assert "does not exist" in err_of(gp, tmp_path / "nope", out, "--weights", wp)
    (tmp_path / "empty").mkdir()
    assert "holds no image" in err_of(gp, tmp_path / "empty", out, "--weights", wp)
    assert "must differ from IN_DIR" in err_of(gp, inp, inp, "--weights", wp)
    assert "must differ from IN_DIR" in err_of(gp, inp, tmp_path / "in" / ".." / "in", "--weights", wp)
    assert "--weights" in err_of(gp, inp, out)  # required: a random-weight student is useless to apply
    e = err_of(gp, inp, out, "--weights", tmp_path / "missing.safetensors")
    assert "missing.safetensors: no such file" in e
    e = err_of(tmp_path / "missing.json", inp, out, "--weights", wp)
    assert "genotype" in e and "missing.json: no such file" in e
    (tmp_path / "bad.json").write_text("{not json")
    assert "bad.json" in err_of(tmp_path / "bad.json", inp, out, "--weights", wp)
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    assert "not an agd genotype" in err_of(tmp_path / "other.json", inp, out, "--weights", wp)
    # weights of another architecture: by shape (no metadata) and by the metadata agd train writes
    g2, w2 = _student(tmp_path, "sr-tiny", seed=2)
    bare = save_weights(Student(Genotype.load(g2)).net, tmp_path / "bare.safetensors")
    e = err_of(gp, inp, out, "--weights", bare)
    assert "bare.safetensors: do not fit the genotype" in e
    e = err_of(gp, inp, out, "--weights", w2)
    assert "sr-tiny-2.safetensors" in e and "another architecture" in e
    gt, wt = _student(tmp_path, "translation-tiny")
    assert "sr-tiny-0.safetensors" in err_of(gt, inp, out, "--weights", wp)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    assert "junk.safetensors" in err_of(gp, inp, out, "--weights", tmp_path / "junk.safetensors")
    (tmp_path / "afile").write_text("x")
    assert "is not a folder" in err_of(gp, inp, tmp_path / "afile", "--weights", wp)
    assert "--overlap 9" in err_of(gp, inp, out, "--weights", wp, "--tile", "16", "--overlap", "9")
    assert not out.exists()  # nothing written by any refused run


def test_apply_tiny_images(tmp_path, capsys):
    """A 2x2 image: SR students take it; translation students (two stride-2 stages, reflection padding)
    refuse it by name, after the images before it were written whole."""
    inp = _images(tmp_path / "in", [(9, 7), (2, 2)])
    gp, wp = _student(tmp_path, "sr-tiny")
    code, _, err = _run(capsys, "apply", gp, inp, tmp_path / "sr", "--weights", wp)
    assert code == 0, err
    assert read_image(tmp_path / "sr/im1.png").shape == (3, 8, 8)
    gt, wt = _student(tmp_path, "translation-tiny")
    code, _, err = _run(capsys, "apply", gt, inp, tmp_path / "tr", "--weights", wt)
    assert code == 2
    assert "im1.png" in err and "2x2 is too small" in err and "at least 5 pixels" in err, err
    assert len(err.strip().splitlines()) == 1
    assert read_image(tmp_path / "tr/im0.png").shape == (3, 9, 7)
    assert not (tmp_path / "tr/im1.png").exists()


def test_real_lr_images(tmp_path, capsys, shared_data):
    folder = shared_data / "sr/Set5/LR_bicubic_x4"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    gp, wp = _student(tmp_path, "sr-tiny")
    code, _, err = _run(capsys, "apply", gp, folder, tmp_path / "out", "--weights", wp, "--tile", "64")
    assert code == 0, err
    src = sorted(folder.iterdir())[0]
    assert read_image(tmp_path / "out" / f"{src.stem}.png").shape[-2:] == tuple(4 * s for s in read_image(src).shape[-2:])
