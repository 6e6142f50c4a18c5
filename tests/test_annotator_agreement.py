"""experiments/annotator_agreement.py: the human and synthetic agreement figures behind data.noise."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tagrank.errors import TagrankError

from .conftest import ROOT, needs_shared

sys.path.insert(0, str(ROOT / "experiments"))
try:
    import annotator_agreement as agreement
finally:
    sys.path.pop(0)


def test_top1_agreement_counts_pairs_of_images_with_an_order():
    lists = [[("a", "b"), ("a",), ("b", "a")],  # 3 pairs, 1 agrees
             [("c",), ("c",)],                   # one tag between them: says nothing about order
             [("d", "e"), ()]]                   # an empty list is no annotator
    assert agreement.top1_agreement(lists) == (1 / 3, 3)
    with pytest.raises(TagrankError, match="no image"):
        agreement.top1_agreement([[("c",), ("c",)]])


def test_synthetic_annotators_disagree_more_with_more_noise():
    shares = [agreement.top1_agreement(agreement.synthetic_lists(noise, n_scenes=150, size=64))[0]
              for noise in (0.0, 0.15, 0.6)]
    assert shares[0] == 1.0 and shares[0] > shares[1] > shares[2]


@needs_shared("coco-mini")
def test_cli_measures_coco_captioners(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:  # from a temp folder: Hydra writes its run folder there
        return subprocess.run([sys.executable, str(ROOT / "experiments/annotator_agreement.py"), *args],
                              capture_output=True, text=True, cwd=tmp_path)

    proc = run("noise=0.15", "scenes=100")
    assert proc.returncode == 0, proc.stderr
    share = float(proc.stdout.split("same first category in ")[1].split()[0])
    assert 0.5 < share < 0.95  # people often, not always, name the same object first
    assert "synthetic annotator, data.noise=0.15: same first tag in" in proc.stdout
    assert len(run("noise=[0.15,0.4]", "scenes=50").stdout.split("synthetic annotator")) == 3
    bad = run("coco=/nonexistent/captions_x.json")
    assert bad.returncode == 2 and "/nonexistent/captions_x.json: no such file" in bad.stderr
    bad = run("noise=low")
    assert bad.returncode == 2 and "noise='low': expected a number or a list of numbers" in bad.stderr
    bad = run("nosie=0.1")  # a misspelt key is Hydra's one-line error
    assert bad.returncode == 2 and "nosie" in bad.stderr
