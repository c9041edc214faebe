"""README.md's measured blocks are what `benchmarks/readme.py` makes of benchmarks/results."""

from conftest import load_script, readme_block


def test_every_measured_block_matches_its_results():
    script = load_script("benchmarks/readme.py")
    for name, make in script.BLOCKS.items():
        assert readme_block(name) == make(), f"README.md's {name} block is stale: run python benchmarks/readme.py"
