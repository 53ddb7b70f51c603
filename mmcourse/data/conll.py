"""CoNLL-format token files: one ``token ... TAG`` line per token, blank lines
between sentences, ``-DOCSTART-`` lines ignored. The tag is the last column.
"""
from __future__ import annotations

from pathlib import Path



def read_conll(path, tagset=None) -> list[tuple[list[str], list[str]]]:
    """Read sentences as (tokens, tags) pairs.

    Args:
        path: the file.
        tagset: if given, every tag must be in it.

    Raises:
        ValueError: naming the file and line of a malformed line or unknown tag.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CoNLL file not found: {path}")
    sentences, tokens, tags = [], [], []
    allowed = set(tagset) if tagset is not None else None
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if tokens:
                    sentences.append((tokens, tags))
                    tokens, tags = [], []
                continue
            if len(parts) < 2:
                raise ValueError(f"{path}:{number}: expected 'token ... tag', got {line.strip()!r}")
            if allowed is not None and parts[-1] not in allowed:
                raise ValueError(f"{path}:{number}: unknown tag {parts[-1]!r}")
            tokens.append(parts[0])
            tags.append(parts[-1])
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def write_conll(sentences, path) -> Path:
    """Write (tokens, tags) pairs in CoNLL format; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for number, (tokens, tags) in enumerate(sentences):
            if len(tokens) != len(tags):
                raise ValueError(f"sentence {number}: {len(tokens)} tokens but {len(tags)} tags")
            for item in (*tokens, *tags):
                if not item or item != "".join(item.split()):
                    raise ValueError(f"sentence {number}: {item!r} is empty or holds whitespace, "
                                     f"so it could not be read back")
            f.writelines(f"{tok} {tag}\n" for tok, tag in zip(tokens, tags))
            f.write("\n")
    return path

