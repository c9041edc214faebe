"""README's pictures are the ones `scripts/readme_pictures.py` made, as its manifest records them."""

import hashlib
import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("readme_pictures", ROOT / "scripts" / "readme_pictures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_shows_the_pictures_the_script_made():
    script = load_script()
    manifest = json.loads(script.MANIFEST.read_text())
    readme = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {script.BLOCK}:start.*?-->\n(.*?)\n<!-- {script.BLOCK}:end -->", readme, flags=re.S)
    assert found, f"README.md lacks the {script.BLOCK} block"
    assert found.group(1) == script.readme_block(manifest), "README's pictures block is stale: run the script"
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", found.group(1))
    assert sorted(shown) == sorted(entry["path"] for entry in manifest["files"].values())
    for entry in manifest["files"].values():
        path = ROOT / entry["path"]
        assert path.is_file(), f"{entry['path']} is missing"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], (
            f"{entry['path']} is not the picture the script made: run python scripts/readme_pictures.py")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size < 400_000, f"{entry['path']} should be a small PNG"
    # the strip shows each strength the manifest describes, for one control
    assert manifest["sampling"]["strengths"] == [0, 0.5, 1, 1.5, 2]
    assert len(manifest["strip_iou"]) == 5 and all(0 <= iou <= 1 for iou in manifest["strip_iou"])
    assert len(manifest["grid_iou"]) == manifest["run"]["num_validation"]
