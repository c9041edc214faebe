"""README's pictures are the ones `scripts/readme_pictures.py` made, as its manifest records them."""

import hashlib
import json
import re

from conftest import ROOT, load_script, readme_block


def test_readme_shows_the_pictures_the_script_made():
    script = load_script("scripts/readme_pictures.py")
    manifest = json.loads(script.MANIFEST.read_text())
    block = readme_block(script.BLOCK)
    assert block == script.readme_block(manifest), "README's pictures block is stale: run the script"
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", block)
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
