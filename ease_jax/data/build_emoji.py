"""Builds the embedded emoji image-caption dataset and its tokenizer.

Renders every fully-qualified emoji of Unicode's `emoji-test.txt` with the Noto Color Emoji font
(Debian packages `unicode-data` and `fonts-noto-color-emoji`), captions it with its CLDR name, and
writes `emoji{size}.npz` (32 px by default), the trained `emoji_tokenizer/`, and the licence /
attribution files.

Usage:
  python -m ease_jax.data.build_emoji --out ease_jax/data/assets
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

DEFAULT_EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
DEFAULT_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
FONT_LICENSE = "/usr/share/doc/fonts-noto-color-emoji/copyright"
UNICODE_LICENSE = "/usr/share/doc/unicode-data/copyright"
# Noto Color Emoji is a CBDT bitmap font with a single 109 px strike (136x128 bitmaps).
FONT_SIZE = 109
TOKENIZER_VOCAB_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class EmojiEntry:
  codepoints: str  # e.g. "1F44B 1F3FD"
  emoji: str       # the emoji itself
  caption: str     # CLDR short name, e.g. "waving hand: medium skin tone"
  group: str
  subgroup: str


def parse_emoji_test(path: str | os.PathLike[str]) -> list[EmojiEntry]:
  """Parses the fully-qualified entries of `emoji-test.txt`, in file order.

  Raises:
    FileNotFoundError: if the file is missing.
    ValueError: on a malformed data line (naming the line number).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"emoji-test.txt not found: {path}")
  entries = []
  group = subgroup = ""
  for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    line = line.strip()
    if line.startswith("# group:"):
      group = line.split(":", 1)[1].strip()
      continue
    if line.startswith("# subgroup:"):
      subgroup = line.split(":", 1)[1].strip()
      continue
    if not line or line.startswith("#"):
      continue
    try:
      data, comment = line.split("#", 1)
      codepoints, status = (s.strip() for s in data.split(";"))
      # Comment: "<emoji> E<version> <name>".
      _, version, name = comment.strip().split(" ", 2)
    except ValueError as e:
      raise ValueError(f"{path}:{lineno}: malformed emoji-test line {line!r}") from e
    if not version.startswith("E"):
      raise ValueError(f"{path}:{lineno}: expected an 'E<version>' field, got {version!r}")
    if status != "fully-qualified":
      continue
    codepoints = " ".join(codepoints.split())
    emoji = "".join(chr(int(cp, 16)) for cp in codepoints.split())
    entries.append(EmojiEntry(codepoints, emoji, name.strip(), group, subgroup))
  return entries


def render_emoji(font, emoji: str, size: int) -> np.ndarray | None:
  """Renders one emoji to a `[size, size, 3]` uint8 image on white; None if nothing is drawn."""
  from PIL import Image, ImageDraw

  left, top, right, bottom = font.getbbox(emoji)
  pad = 8
  canvas = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (255, 255, 255, 0))
  ImageDraw.Draw(canvas).text((pad - left, pad - top), emoji, font=font, embedded_color=True)
  white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
  rgb = np.asarray(Image.alpha_composite(white, canvas).convert("RGB"))
  alpha = np.asarray(canvas)[..., 3]
  ink = (alpha > 0) & (rgb.min(axis=-1) < 255)
  if not ink.any():
    return None
  rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
  crop = rgb[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  h, w = crop.shape[:2]
  side = max(h, w)
  square = np.full((side, side, 3), 255, np.uint8)
  square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = crop
  return np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.LANCZOS))


def build(out_dir: str | os.PathLike[str], emoji_test: str = DEFAULT_EMOJI_TEST,
          font_path: str = DEFAULT_FONT, size: int = 32,
          vocab_size: int = TOKENIZER_VOCAB_SIZE) -> dict[str, int]:
  """Builds `emoji{size}.npz`, `emoji_tokenizer/` and the licence files in `out_dir`.

  Every input (font, licences, emoji-test.txt) is checked before anything is rendered, and every
  output is built in a staging folder inside `out_dir` and moved into place only once all of them
  are complete and the tokenizer has passed its checks: a failed or interrupted build leaves the
  files already in `out_dir` (by default the package's shipped assets) as they were.

  Returns:
    Statistics: `rendered`, `skipped`, `vocab_size`, `max_tokens`.
  """
  from PIL import ImageFont
  from tqdm import tqdm

  from ease_jax import hf

  if size < 1:
    raise ValueError(f"size must be >= 1 px, got {size}.")
  if not pathlib.Path(font_path).is_file():
    raise FileNotFoundError(
        f"emoji font not found: {font_path} (apt-get install fonts-noto-color-emoji)")
  for src, what in ((FONT_LICENSE, "Noto Color Emoji font"),
                    (UNICODE_LICENSE, "Unicode emoji-test.txt")):
    if not pathlib.Path(src).is_file():
      raise FileNotFoundError(f"licence file for the {what} not found: {src}")
  entries = parse_emoji_test(emoji_test)
  font = ImageFont.truetype(font_path, size=FONT_SIZE)
  kept, images, skipped = [], [], []
  for entry in tqdm(entries, desc="rendering emoji", unit="emoji"):
    image = render_emoji(font, entry.emoji, size)
    if image is None:
      skipped.append(entry)
      continue
    kept.append(entry)
    images.append(image)
  if not kept:
    raise ValueError(f"the font {font_path} rendered none of the {len(entries)} emoji of "
                     f"{emoji_test}.")
  if skipped:
    print(f"skipped {len(skipped)} emoji the font cannot render, e.g. "
          + ", ".join(f"{e.codepoints} ({e.caption})" for e in skipped[:5]), file=sys.stderr)

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  stage = pathlib.Path(tempfile.mkdtemp(prefix=".build-", dir=out))
  try:
    stats = _build_into(stage, kept, images, size, vocab_size, emoji_test, font_path)
    stats["skipped"] = len(skipped)
    for item in sorted(stage.iterdir()):
      if item.is_dir():
        hf.replace_dir(item, out / item.name)
      else:
        os.replace(item, out / item.name)
  finally:
    shutil.rmtree(stage, ignore_errors=True)
  return stats


def _build_into(stage: pathlib.Path, kept: list[EmojiEntry], images: list[np.ndarray],
                size: int, vocab_size: int, emoji_test: str, font_path: str) -> dict[str, int]:
  """Writes the npz, the trained and checked tokenizer and the licences into `stage`."""
  from ease_jax.data import dataset as dataset_lib
  from ease_jax.data import tokenizer as tok_lib

  npz_path = stage / dataset_lib.emoji_npz_name(size)
  np.savez_compressed(
      npz_path,
      images=np.stack(images).astype(np.uint8),
      captions=np.asarray([e.caption for e in kept], dtype=str),
      groups=np.asarray([e.group for e in kept], dtype=str),
      subgroups=np.asarray([e.subgroup for e in kept], dtype=str),
      codepoints=np.asarray([e.codepoints for e in kept], dtype=str),
  )
  captions = [e.caption for e in kept]
  tok_dir = stage / dataset_lib.EMOJI_TOKENIZER
  tok_lib.train_clip_bpe(captions, tok_dir, vocab_size=vocab_size,
                         model_max_length=dataset_lib.EMOJI_CONTEXT_LENGTH)
  slow = tok_lib.load_tokenizer(tok_dir, fast=False)
  fast = tok_lib.load_tokenizer(tok_dir, fast=True)
  slow_ids = slow(captions)["input_ids"]
  fast_ids = fast(captions)["input_ids"]
  for caption, a, b in zip(captions, slow_ids, fast_ids):
    if a != b:
      raise RuntimeError(f"slow and fast tokenizers disagree on {caption!r}: {a} vs {b}")
    # CLIP decoding puts a space after every word-final token ("upside - down"), so compare
    # without whitespace.
    decoded = fast.decode(b, skip_special_tokens=True)
    if "".join(decoded.split()) != "".join(caption.lower().split()):
      raise RuntimeError(f"tokenizer does not round-trip {caption!r}")
  lengths = np.asarray([len(ids) for ids in fast_ids])

  _write_licences(stage, emoji_test, font_path, npz_path.name)
  stats = {"rendered": len(kept), "vocab_size": len(fast), "max_tokens": int(lengths.max()),
           "npz_bytes": npz_path.stat().st_size}
  for ctx in (16, 24, 32):
    stats[f"truncated_at_{ctx}"] = int((lengths > ctx).sum())
  return stats


def _write_licences(out: pathlib.Path, emoji_test: str, font_path: str,
                    npz_name: str = "emoji32.npz") -> None:
  """Copies the font / Unicode licences and writes ATTRIBUTION.md."""
  for src, dst, what in ((FONT_LICENSE, "LICENSE-NotoColorEmoji.txt", "Noto Color Emoji font"),
                         (UNICODE_LICENSE, "LICENSE-Unicode.txt", "Unicode emoji-test.txt")):
    if not pathlib.Path(src).is_file():
      raise FileNotFoundError(f"licence file for the {what} not found: {src}")
    header = f"Licence of the {what}, copied from Debian's {src}.\n\n"
    (out / dst).write_text(header + pathlib.Path(src).read_text(encoding="utf-8"), encoding="utf-8")
  test_header = "\n".join(l for l in pathlib.Path(emoji_test).read_text(encoding="utf-8")
                          .splitlines()[:9] if l.startswith("#"))
  (out / "ATTRIBUTION.md").write_text(f"""# Embedded emoji dataset: attribution

`{npz_name}` and `emoji_tokenizer/` are generated by `python -m ease_jax.data.build_emoji`.

* **Images**: each fully-qualified emoji rendered with the *Noto Color Emoji* font
  (`{font_path}`, Debian package `fonts-noto-color-emoji`), Copyright 2013-2017 Google Inc.,
  licensed under the SIL Open Font License 1.1 (see `LICENSE-NotoColorEmoji.txt`). Glyphs are
  rendered, cropped to their bounding box, padded to a square on white and downsampled.
* **Captions, groups, subgroups, code points**: from Unicode's `emoji-test.txt`
  (`{emoji_test}`, Debian package `unicode-data`), used under the Unicode licence / terms of use
  (see `LICENSE-Unicode.txt`). Its header:

```
{test_header}
```

* **Tokenizer**: a CLIP-format BPE trained on those captions by this project.
""", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "assets"))
  parser.add_argument("--size", type=int, default=32, help="output image side in pixels")
  parser.add_argument("--emoji-test", default=DEFAULT_EMOJI_TEST)
  parser.add_argument("--font", default=DEFAULT_FONT)
  parser.add_argument("--vocab-size", type=int, default=TOKENIZER_VOCAB_SIZE)
  args = parser.parse_args(argv)
  stats = build(args.out, args.emoji_test, args.font, args.size, args.vocab_size)
  for k, v in stats.items():
    print(f"{k}: {v}")


if __name__ == "__main__":
  main()
