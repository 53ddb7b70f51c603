"""mmcourse.cli: ``mmcourse predict`` classifies files with a bundle or an ONNX file like predict() does, and every
bad input ends in one line naming the problem and exit status 2, never a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmcourse import cli, deploy
from mmcourse.data.text import WORLD_VOCAB
from mmcourse.deploy import export_onnx, save_bundle
from mmcourse.efficiency import build_model
from mmcourse.inference import InputSpec, predict

SPEC = InputSpec(tuple(f"class {i}" for i in range(4)), image_size=16, audio_samples=256, sample_rate=8000)
ENCODERS = {"audio": {"family": "cnn", "dim": 8, "widths": [4, 8]},
            "image": {"family": "cnn", "dim": 8, "widths": [4, 8]},
            "text": {"family": "bag", "dim": 8}}
ARCH = {"encoders": ENCODERS, "fusion": {"name": "concat", "hidden": 16}, "num_classes": 4}
CAPTION = "a big red circle"                  # words of WORLD_VOCAB
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A bundle, an image+text bundle and its ONNX export, and input files of the spec's sizes."""
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = build_model(ARCH).eval()
    it_arch = {**ARCH, "encoders": {m: e for m, e in ENCODERS.items() if m != "audio"}}
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(d / "scene.png")
    Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(d / "wide.png")
    (d / "notes.png").write_text("not an image")
    clip = 0.5 * np.sin(np.arange(256) * 0.3)
    cli.write_wav(d / "clip.wav", clip, 8000)
    cli.write_wav(d / "fast.wav", clip, 16000)
    cli.write_wav(d / "long.wav", np.concatenate([clip, clip]), 8000)
    with wave.open(str(d / "stereo.wav"), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b"\0\0" * 512)
    it_model = build_model(it_arch).eval()
    return {"dir": d, "model": model, "bundle": save_bundle(d / "bundle", model, ARCH, SPEC),
            "it": save_bundle(d / "it_bundle", it_model, it_arch, SPEC),
            "onnx": export_onnx(it_model, SPEC, d / "it.onnx"),
            "image": d / "scene.png", "audio": d / "clip.wav", "clip": clip}


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["predict", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prediction_from_files_equals_predict_on_the_same_scene(files, capsys):
    code, out, err = run(capsys, "--model", files["bundle"], "--image", files["image"], "--text", CAPTION,
                         "--audio", files["audio"], "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    probs = list(result["probabilities"].values())
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
    assert sorted(result["probabilities"]) == sorted(SPEC.class_names) and result["label"] == next(iter(
        result["probabilities"]))
    pixels = np.array(Image.open(files["image"]).convert("RGB"))[None]                 # (1, 16, 16, 3)
    pcm = np.round(files["clip"] * 32768).astype(np.float32)[None] / 32768               # as 16-bit PCM holds it
    files["model"].input_spec = SPEC
    expected = predict(files["model"], images=pixels, audio=pcm, captions=[CAPTION]).probs[0]
    got = torch.tensor([result["probabilities"][c] for c in SPEC.class_names])
    torch.testing.assert_close(got, expected)
    assert result["modalities"] == ["audio", "image", "text"]


def test_onnx_file_and_bundle_give_the_same_probabilities(files, capsys):
    assert [i.name for i in deploy.OnnxModel(files["onnx"]).session.get_inputs()] == ["image", "text", "present"]
    results = []
    for model in (files["it"], files["onnx"]):
        code, out, _ = run(capsys, "--model", model, "--image", files["image"], "--text", CAPTION, "--json")
        assert code == 0
        results.append(json.loads(out)["probabilities"])
    assert results[0].keys() == results[1].keys()
    np.testing.assert_allclose(list(results[0].values()), list(results[1].values()), rtol=1e-4, atol=1e-6)


def test_text_output_lists_every_class_sorted(files, capsys):
    code, out, _ = run(capsys, "--model", files["it"], "--text", CAPTION)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 1 + len(SPEC.class_names)
    shown = [float(line.split()[2].rstrip("%")) for line in lines[1:]]
    assert shown == sorted(shown, reverse=True) and lines[0].startswith(lines[1].split("  ")[1].strip())


def _bad_inputs(files, tmp_path):
    d = files["dir"]
    old = tmp_path / "old_bundle"
    save_bundle(old, files["model"], ARCH, SPEC)
    manifest = json.loads((old / deploy.MANIFEST).read_text())
    (old / deploy.MANIFEST).write_text(json.dumps({**manifest, "version": 0}))
    import onnx
    proto = onnx.load(str(files["onnx"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    b, img = files["bundle"], files["image"]
    return [
        (["--model", b, "--image", d / "missing.png"], "--image: no such file"),
        (["--model", b, "--image", d / "notes.png"], "is not an image PIL can read"),
        (["--model", b, "--image", d / "wide.png"], "is 16x20 pixels; the model reads 16x16 images"),
        (["--model", b, "--text", "zebra quantum"], "none of the words of 'zebra quantum' is in the model's"),
        (["--model", b, "--text", " "], "the caption is empty"),
        (["--model", files["it"], "--image", img, "--audio", files["audio"]], "the model has no audio input"),
        (["--model", files["onnx"], "--audio", files["audio"]], "the model has no audio input (its modalities: "
                                                                  "image, text); leave out --audio"),
        (["--model", old, "--image", img], "format version 0; this code reads version 1"),
        (["--model", tmp_path / "bare.onnx", "--image", img], "has no mmcourse metadata"),
        (["--model", d / "nowhere", "--image", img], "--model: no such bundle directory or ONNX file"),
        (["--model", img, "--text", CAPTION], "neither a bundle directory nor an .onnx file"),
        (["--model", b, "--audio", d / "fast.wav"], "sampled at 16000 Hz; the model reads 8000 Hz"),
        (["--model", b, "--audio", d / "long.wav"], "holds 512 samples; the model reads clips of exactly 256"),
        (["--model", b, "--audio", d / "stereo.wav"], "has 2 channels; the model reads mono"),
        (["--model", b, "--audio", img], "is not a WAV file"),
        (["--model", b], "give at least one of --image, --text, --audio"),
    ]


def test_every_bad_input_gives_one_line_and_exit_status_2(files, capsys, tmp_path):
    for argv, message in _bad_inputs(files, tmp_path):
        code, out, err = run(capsys, *argv)
        assert (code, out) == (2, ""), (argv, code, out)
        assert err.count("\n") == 1 and err.startswith("mmcourse predict: error: "), (argv, err)
        assert message in err, (argv, err)
        assert "Traceback" not in err


def test_float_and_pcm_wav_files_read_back_their_samples(files, tmp_path):
    clip = files["clip"].astype(np.float32)
    data = clip.astype("<f4").tobytes()
    fmt = (3).to_bytes(2, "little") + (1).to_bytes(2, "little") + (8000).to_bytes(4, "little") + \
        (32000).to_bytes(4, "little") + (4).to_bytes(2, "little") + (32).to_bytes(2, "little")
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"data" + len(data).to_bytes(4, "little") + data
    (tmp_path / "float.wav").write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)
    np.testing.assert_array_equal(cli.read_wav(tmp_path / "float.wav", SPEC), clip)
    np.testing.assert_allclose(cli.read_wav(files["audio"], SPEC), clip, atol=1 / 32768)   # 16-bit PCM rounding


def test_a_caption_with_some_unknown_words_is_accepted(files, capsys):
    code, _, err = run(capsys, "--model", files["bundle"], "--text", "a big zebra")
    assert code == 0 and err == ""


def test_the_real_entry_point_python_m_mmcourse(files):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "mmcourse", "predict", "--model", str(files["onnx"]),
                           "--image", str(files["image"]), "--text", "zebra quantum"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.strip().endswith("is in the model's vocabulary of %d words (e.g. a, at, big, block, blue)"
                                        % len(WORLD_VOCAB)), done.stderr
