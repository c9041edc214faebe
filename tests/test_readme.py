"""README.md's measured blocks are what `benchmarks/readme.py` makes of benchmarks/results."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_readme_script():
    spec = importlib.util.spec_from_file_location("readme_blocks", ROOT / "benchmarks" / "readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_measured_block_matches_its_results():
    script = load_readme_script()
    readme = (ROOT / "README.md").read_text()
    for name, make in script.BLOCKS.items():
        found = re.search(rf"<!-- {name}:start.*?-->\n(.*?)\n<!-- {name}:end -->", readme, flags=re.S)
        assert found, f"README.md lacks the {name} block"
        assert found.group(1) == make(), f"README.md's {name} block is stale: run python benchmarks/readme.py"
