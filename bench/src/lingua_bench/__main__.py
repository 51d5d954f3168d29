"""``python -m lingua_bench``: placeholder until the benchmark runner lands."""

import sys


def main() -> int:
    print("lingua_bench: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
