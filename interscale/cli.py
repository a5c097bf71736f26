"""Command-line interface (placeholder)."""


def main(argv=None) -> int:
    return 0
