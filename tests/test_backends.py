"""The backend registry (``longgen.modalities.backends``): a checkpoint finds its family from
its model_index.json, refusals name what was found and what is supported, and a new family is
one file plus one registry line -- shown by registering a toy family served by the builtin
prior's file and checking it gives the builtin run's latent bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from longgen.modalities import backends as B


def _index(tmp_path, cls: str, **parts) -> str:
    d = tmp_path / cls
    d.mkdir()
    (d / "model_index.json").write_text(json.dumps({"_class_name": cls, **parts}))
    return str(d)


@pytest.mark.parametrize("modality,cls,name", [
    ("image", "StableDiffusionPipeline", "sd"), ("image", "StableDiffusionXLPipeline", "sd"),
    ("image", "FluxPipeline", "flux"), ("image", "StableDiffusion3Pipeline", "sd3"),
    ("video", "WanPipeline", "wan"), ("video", "WanImageToVideoPipeline", "wan"),
    ("video", "CogVideoXPipeline", "cogvideox"), ("video", "LTXPipeline", "ltx"),
    ("video", "TextToVideoSDPipeline", "unet-video"), ("video", "AnimateDiffPipeline", "unet-video"),
])
def test_a_checkpoint_finds_its_family(tmp_path, modality, cls, name):
    assert B.find_backend(modality, _index(tmp_path, cls)).name == name


def test_checkpoints_without_an_index_go_to_the_fallback(tmp_path):
    f = tmp_path / "lavie_base.pt"
    f.write_bytes(b"")
    assert B.find_backend("video", str(f)).name == "unet-video"
    assert B.find_backend("image", str(tmp_path)).name == "sd"      # its loader explains
    assert B.find_backend("motion", str(f)).name == "condmdi"
    assert B.find_backend("image", "someone/not-in-the-cache").name == "sd"


def test_refusals_name_the_class_found_and_the_supported_ones(tmp_path):
    with pytest.raises(ValueError, match=r"WanPipeline checkpoint, a video model; the image "
                                         r"commands run StableDiffusionPipeline, .*FluxPipeline"):
        B.find_backend("image", _index(tmp_path, "WanPipeline"))
    with pytest.raises(ValueError, match=r"HunyuanVideoPipeline checkpoint \(HunyuanVideo\), which longgen "
                                         r"does not run yet; supported video pipelines: WanPipeline"):
        B.find_backend("video", _index(tmp_path, "HunyuanVideoPipeline"))
    with pytest.raises(ValueError, match=r"names 'PixArtAlphaPipeline', which no longgen image backend "
                                         r"runs; supported: StableDiffusionPipeline, StableDiffusionXLPipeline, "
                                         r"FluxPipeline, StableDiffusion3Pipeline"):
        B.find_backend("image", _index(tmp_path, "PixArtAlphaPipeline", transformer=["diffusers", "X"]))
    # a UNet pipeline this modality does not name is read by the fallback family, whose loader checks it
    assert B.find_backend("image", _index(tmp_path, "StableDiffusionInpaintPipeline",
                                          unet=["diffusers", "UNet2DConditionModel"])).name == "sd"
    with pytest.raises(ValueError, match="no image backend 'nope'; allowed: builtin, sd, flux, sd3"):
        B.backend_named("image", "nope")


def test_the_cli_refuses_another_modality_s_checkpoint_in_one_line(tmp_path, capsys):
    from longgen.cli import main

    d = _index(tmp_path, "LTXPipeline")
    rc = main(["panorama", "--model", d, "--out", str(tmp_path / "o.png"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert "LTXPipeline checkpoint, a video model" in err[0]
    assert not (tmp_path / "o.png").exists()


def test_a_new_family_is_one_file_and_one_line(tmp_path, monkeypatch):
    """A toy family registered beside the others (its file: the builtin backend's) is found from
    its model_index.json and runs the one image job path: the same latent as ``"builtin"``."""
    from longgen.modalities.image import panorama

    toy = B.Backend("toy", "image", ("ToyPipeline",), "image.builtin", "load_builtin")
    monkeypatch.setattr(B, "BACKENDS", B.BACKENDS + (toy,))
    d = _index(tmp_path, "ToyPipeline")
    assert B.find_backend("image", d) is toy
    kw = dict(prompt="snow", width=1024, height=256, steps=6, seed=3, output_type="latent")
    ref = panorama("builtin", **kw)
    out = panorama(d, **kw)
    assert out.shape == ref.shape == (4, 32, 128)
    assert torch.equal(out, ref)


def test_every_modality_has_a_builtin_backend_and_one_fallback():
    for modality in ("image", "video", "motion"):
        names = [b.name for b in B.backends(modality)]
        assert "builtin" in names and len(set(names)) == len(names)
        assert sum(b.fallback for b in B.backends(modality)) == 1


def test_a_new_video_family_runs_the_one_video_job_path(tmp_path, monkeypatch):
    """A toy video family registered beside the others (served by the builtin backend's file)
    runs ``video_parts`` through the contract alone: the builtin run's latent bit for bit."""
    from longgen.modalities.video import video

    toy = B.Backend("toy", "video", ("ToyVideoPipeline",), "video.builtin", "load_builtin")
    monkeypatch.setattr(B, "BACKENDS", B.BACKENDS + (toy,))
    d = _index(tmp_path, "ToyVideoPipeline")
    assert B.find_backend("video", d) is toy
    kw = dict(prompt="night|day", frames=24, height=32, width=48, steps=5, seed=2, output_type="latent")
    ref = video("builtin", **kw)
    out = video(d, **kw)
    assert out.shape == ref.shape == (4, 24, 4, 6)
    assert torch.equal(out, ref)


def test_a_new_motion_family_runs_the_one_motion_job_path(tmp_path, monkeypatch):
    """The same for motion: a toy family served by the builtin motion backend's file gives the
    builtin run's joints bit for bit."""
    import numpy as np

    from longgen.cli import main

    toy = B.Backend("toy", "motion", ("ToyMotionPipeline",), "motion.builtin", "load_builtin")
    monkeypatch.setattr(B, "BACKENDS", B.BACKENDS + (toy,))
    d = _index(tmp_path, "ToyMotionPipeline")
    assert B.find_backend("motion", d) is toy
    common = ["--frames", "60", "--window-frames", "40", "--steps", "6", "--no-progress"]
    assert main(["motion", *common, "--out", str(tmp_path / "a.npy")]) == 0
    assert main(["motion", "--model", d, *common, "--out", str(tmp_path / "b.npy")]) == 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == b.shape == (60, 22, 3)
    assert np.array_equal(a, b)
