"""`secateur dataset check FILE`: the same facts as POST /datasets/validate, locally, without a service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service import cli
from tests.engine.image_archives import encoded, imagenet_members, write_archive
from workers.compression.dataset_check import check_dataset


def test_the_secateur_command_prints_the_facts_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       ) -> None:
    """`secateur dataset check FILE --json` answers the API's fields; a summary without --json."""
    path = write_archive(tmp_path / "d.zip", "zip", imagenet_members(10, with_val=True, corrupt=0))
    assert cli.main(["dataset", "check", str(path), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["ok"] is True
    assert set(facts) == {"ok", "format", "num_classes", "classes", "splits", "counts", "image_sizes",
                          "unreadable", "warnings"}
    assert facts["splits"] == {"train": 24, "val": 6}
    assert cli.main(["dataset", "check", str(path)]) == 0
    assert capsys.readouterr().out.startswith("zip: 3 classes, 24 train / 6 val images, 0 unreadable")


def test_imbalance_is_a_warning_and_garbage_exits_2(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """One class 20 times the size of another is flagged; a file that is no dataset exits 2 with its code."""
    rng = np.random.default_rng(0)
    members = {f"train/big/{i}.png": encoded(rng, 0, (8, 8), "PNG") for i in range(40)}
    members |= {f"train/small/{i}.png": encoded(rng, 1, (8, 8), "PNG") for i in range(2)}
    facts = check_dataset(write_archive(tmp_path / "d.tar", "tar", members))
    assert any("class imbalance: 'big'" in w for w in facts["warnings"])
    garbage = tmp_path / "g.bin"
    garbage.write_bytes(b"nothing to see")
    assert cli.main(["dataset", "check", str(garbage)]) == 2
    assert capsys.readouterr().err.startswith("error: invalid_dataset: unrecognized dataset format")
