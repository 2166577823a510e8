"""What the benchmark scripts share: writing their section of BENCHMARKS.md."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_section(name, title, table):
    """Replaces the section between <!-- NAME:start --> and <!-- NAME:end -->, or adds it."""
    bench = ROOT / "BENCHMARKS.md"
    text = bench.read_text() if bench.exists() else "# Benchmarks\n"
    section = f"<!-- {name}:start -->\n{table}\n<!-- {name}:end -->"
    pattern = rf"<!-- {name}:start -->.*<!-- {name}:end -->"
    if re.search(pattern, text, flags=re.S):
        text = re.sub(pattern, lambda _: section, text, flags=re.S)
    else:
        text += f"\n## {title}\n\n{section}\n"
    bench.write_text(text)
