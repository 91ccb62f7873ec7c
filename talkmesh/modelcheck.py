"""Exit 0 when every ONNX model file named is whole (the Kubernetes ``check-models`` init containers).

    python -m talkmesh.modelcheck FILE...

Whole: the file exists and is not empty, and so is every external data file its graph names
(``unet.onnx.data`` beside MuseTalk's UNet, which is over 2 GB: copy an export's whole directory),
inside the model's directory, and long enough for every tensor's offset and length in it. Nothing
is loaded (talkmesh.common.onnx_files reads the graph's ``external_data`` entries with the standard
library only), so the check needs a few MiB whatever the weights weigh. Each problem is one line on
stderr, naming the file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from talkmesh.common.onnx_files import model_file_problems

USAGE = "usage: python -m talkmesh.modelcheck FILE..."


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or any(a.startswith("-") for a in args):
        print(USAGE, file=sys.stderr)
        return 2
    problems = [p for a in args for p in model_file_problems(Path(a))]
    for p in problems:
        print(f"talkmesh: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
