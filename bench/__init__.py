"""Benchmarks that print the figures the issues ask for (never run as tests)."""


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    """The figures of one benchmark: name, value, and what it is measured against."""
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print(title)  # noqa: T201
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>{value_width}}  {note}")  # noqa: T201
