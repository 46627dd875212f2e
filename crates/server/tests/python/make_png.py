"""Writes a small solid-colour PNG (standard library only): make_png.py OUT [WIDTH HEIGHT]."""

import sys

from conftest import png_bytes

if __name__ == "__main__":
    w, h = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (64, 48)
    with open(sys.argv[1], "wb") as f:
        f.write(png_bytes(w, h))
