"""The ``mmcourse`` command line: ``mmcourse predict`` classifies files with a shipped model.

::

    mmcourse predict --model build/14_efficiency/bundle --image scene.png --text "a ringing circle"
    mmcourse predict --model build/14_efficiency/model.onnx --audio clip.wav --json

``--model`` is a bundle directory (:func:`mmcourse.deploy.save_bundle`) or an ONNX file
(:func:`mmcourse.deploy.export_onnx`); ``--image`` a PNG or JPEG (read as RGB),
``--audio`` a mono WAV file (16-bit PCM or 32-bit float), ``--text`` a caption. Any of
the three may be left out, not all. A user's data is never silently remapped: an image
of another size or a clip of another length or sample rate is refused with the size the
model expects (resize or resample it first). Bad input ends with a one-line error and
exit status 2, no traceback. The inputs go through :func:`mmcourse.inference.predict`,
the same path as in the notebooks.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .inference import InputSpec

EXIT_USAGE = 2              # what argparse uses for bad arguments; also ours for bad input files
WAVE_PCM, WAVE_FLOAT = 1, 3  # the WAV format tags we read (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT)
PCM16_SCALE = 32768.0       # int16 full scale: PCM samples / 32768 lie in [-1, 1)


class InputError(ValueError):
    """Bad input of the command line: shown as one line, exit status 2."""


# ----------------------------------------------------------------------------- reading files

def read_image(path, spec: InputSpec) -> np.ndarray:
    """A PNG/JPEG file as uint8 pixels (S, S, 3), RGB; refused unless it is S x S.

    Raises:
        InputError: no such file, not an image, or not the model's size.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--image: no such file {path}")
    try:
        with Image.open(path) as im:
            rgb = np.array(im.convert("RGB"))                       # (H, W, 3) uint8, a writable copy
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"--image: {path} is not an image PIL can read ({type(exc).__name__})") from None
    s = spec.image_size
    if rgb.shape[:2] != (s, s):
        raise InputError(f"--image: {path} is {rgb.shape[1]}x{rgb.shape[0]} pixels; the model reads "
                         f"{s}x{s} images (resize it to {s}x{s} first)")
    return rgb


def _wav_chunks(data: bytes, path: Path) -> dict[bytes, bytes]:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InputError(f"--audio: {path} is not a WAV file (no RIFF/WAVE header)")
    chunks, i = {}, 12
    while i + 8 <= len(data):
        tag, size = data[i:i + 4], int.from_bytes(data[i + 4:i + 8], "little")
        chunks.setdefault(tag, data[i + 8:i + 8 + size])
        i += 8 + size + (size & 1)                                  # chunks are padded to even sizes
    if b"fmt " not in chunks or b"data" not in chunks:
        raise InputError(f"--audio: {path} is not a complete WAV file (no 'fmt ' or 'data' chunk)")
    return chunks


def read_wav(path, spec: InputSpec) -> np.ndarray:
    """A mono WAV file (16-bit PCM or 32-bit float) as float32 samples (T,) in [-1, 1].

    Refused unless its sample rate is ``spec.sample_rate`` and it holds ``spec.audio_samples`` samples.

    Raises:
        InputError: no such file, not a WAV file, a format other than mono int16/float32, or another
            sample rate or length (naming the expected value).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--audio: no such file {path}")
    chunks = _wav_chunks(path.read_bytes(), path)
    fmt = chunks[b"fmt "]
    if len(fmt) < 16:
        raise InputError(f"--audio: {path} has a malformed 'fmt ' chunk")
    tag, channels, rate = (int.from_bytes(fmt[a:b], "little") for a, b in ((0, 2), (2, 4), (4, 8)))
    bits = int.from_bytes(fmt[14:16], "little")
    if channels != 1:
        raise InputError(f"--audio: {path} has {channels} channels; the model reads mono clips (mix them down first)")
    if (tag, bits) == (WAVE_PCM, 16):
        samples = np.frombuffer(chunks[b"data"], dtype="<i2").astype(np.float32) / PCM16_SCALE
    elif (tag, bits) == (WAVE_FLOAT, 32):
        samples = np.frombuffer(chunks[b"data"], dtype="<f4").astype(np.float32)
    else:
        raise InputError(f"--audio: {path} is WAV format {tag} with {bits}-bit samples; this reads 16-bit PCM "
                         f"or 32-bit float")
    if rate != spec.sample_rate:
        raise InputError(f"--audio: {path} is sampled at {rate} Hz; the model reads {spec.sample_rate} Hz "
                         f"(resample it first)")
    if len(samples) != spec.audio_samples:
        raise InputError(f"--audio: {path} holds {len(samples)} samples; the model reads clips of exactly "
                         f"{spec.audio_samples} samples ({spec.audio_samples / spec.sample_rate:.3f} s at "
                         f"{spec.sample_rate} Hz)")
    if not np.isfinite(samples).all():
        raise InputError(f"--audio: {path} holds NaN or infinite samples")
    return samples


def write_wav(path, samples, sample_rate: int) -> Path:
    """Write float samples (T,) in [-1, 1] as a mono 16-bit PCM WAV file (e.g. a world's clip, for the CLI)."""
    import wave

    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"samples must be one mono clip (T,), got shape {x.shape}")
    pcm = np.clip(np.round(x * PCM16_SCALE), -PCM16_SCALE, PCM16_SCALE - 1).astype("<i2")
    path = Path(path)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return path


def check_caption(text: str, vocab) -> str:
    """``text`` if at least one of its words is in ``vocab``; a caption of unknown words only is refused."""
    from .data.text import Tokenizer

    words = Tokenizer.tokenize(text)
    if not words:
        raise InputError("--text: the caption is empty (leave out --text to classify without a caption)")
    known = [w for w in words if w in vocab.stoi]
    if not known:
        raise InputError(f"--text: none of the words of {text[:60]!r} is in the model's vocabulary of "
                         f"{len(vocab)} words (e.g. {', '.join([w for w in vocab.itos if w.isalpha()][:5])})")
    return text


# ----------------------------------------------------------------------------- the model

def load_model(path):
    """A bundle directory or an ONNX file as a model :func:`mmcourse.inference.predict` takes.

    Returns:
        ``(model, spec, vocab, modalities)`` (``modalities``: the ones the model has).
    """
    from .deploy import OnnxModel, load_bundle

    path = Path(path)
    if not path.exists():
        raise InputError(f"--model: no such bundle directory or ONNX file {path}")
    if path.is_dir():
        bundle = load_bundle(path)
        return bundle.model, bundle.spec, bundle.vocab, tuple(bundle.model.modalities)
    if path.suffix.lower() != ".onnx":
        raise InputError(f"--model: {path} is neither a bundle directory nor an .onnx file")
    onnx_model = OnnxModel(path)
    return onnx_model, onnx_model.input_spec, onnx_model.vocab, onnx_model.modalities


def _servable(model, modalities):
    """``model`` over all of ``MODALITIES`` as predict requires: the columns of ``present`` it lacks are dropped."""
    import torch

    from .modality import MODALITIES

    if tuple(modalities) == MODALITIES:
        return model
    columns = [MODALITIES.index(m) for m in modalities]

    class Servable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.modalities, self.input_spec = model, MODALITIES, model.input_spec

        def forward(self, inputs, present):
            return self.inner(inputs, present[:, columns])          # (B, M) -> (B, M_model)

    return Servable()


# ----------------------------------------------------------------------------- the command

def predict_files(model_path, *, image=None, text=None, audio=None) -> dict:
    """Classify one sample from files: ``{"label", "probabilities" {name: p}, "modalities", "model"}``.

    Raises:
        InputError, ValueError, FileNotFoundError: bad input (see the module docstring).
    """
    from .data.text import WORLD_VOCAB
    from .inference import predict

    if image is None and text is None and audio is None:
        raise InputError("give at least one of --image, --text, --audio")
    model, spec, vocab, modalities = load_model(model_path)
    given = [m for m, x in (("audio", audio), ("image", image), ("text", text)) if x is not None]
    lacking = [m for m in given if m not in modalities]
    if lacking:
        raise InputError(f"--{lacking[0]}: the model has no {lacking[0]} input (its modalities: "
                         f"{', '.join(modalities)}); leave out --{lacking[0]}")
    if text is not None and vocab.itos != WORLD_VOCAB.itos:
        raise InputError(f"--model: its vocabulary ({len(vocab)} words) is not the course's WORLD_VOCAB "
                         f"({len(WORLD_VOCAB)} words), the one captions are tokenised with")
    raw = {"images": read_image(image, spec)[None] if image is not None else None,       # (1, S, S, 3) uint8
           "audio": read_wav(audio, spec)[None] if audio is not None else None,          # (1, T) float32
           "captions": [check_caption(text, vocab)] if text is not None else None}
    result = predict(_servable(model, modalities), device="cpu", spec=spec, **raw)
    probs = result.probs[0].tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    return {"label": result.labels[0], "probabilities": {spec.class_names[i]: probs[i] for i in order},
            "modalities": given, "model": str(model_path)}


def _print_result(result: dict) -> None:
    probs = result["probabilities"]
    width = max(len(name) for name in probs)
    print(f"{result['label']}   (from {', '.join(result['modalities'])}; model {result['model']})")
    for name, p in probs.items():
        print(f"  {name:<{width}}  {p:6.1%}  {'#' * round(p * 40)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmcourse", description="The mmcourse command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("predict", help="classify an image, a caption and/or a clip with a shipped model",
                            description="Classify one scene from files with a model bundle or ONNX file.")
    p.add_argument("--model", required=True, help="a bundle directory or an .onnx file")
    p.add_argument("--image", help="a PNG or JPEG file of the model's image size")
    p.add_argument("--text", help="a caption")
    p.add_argument("--audio", help="a mono WAV file (16-bit PCM or float) at the model's sample rate and length")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def main(argv=None) -> int:
    """Run the command line on ``argv`` (None: ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        result = predict_files(args.model, image=args.image, text=args.text, audio=args.audio)
    except (ValueError, TypeError, OSError) as exc:     # bad input (load_bundle, OnnxModel, predict, files)
        print(f"mmcourse {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result))
    else:
        _print_result(result)
    return 0
