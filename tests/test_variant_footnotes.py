"""Table footnotes name every faithful/fixed switch PCL read, including those outside the ``pcl``
section (``views.sobel_overflow``) and the epoch unit that ``epochs trained`` counts (README,
"Faithful vs fixed")."""
from __future__ import annotations

from pclbench.pretrain.checkpoint import FORMAT, save_checkpoint
from pclbench.cli import checkpoint_info
from pclbench.report.results import variant_text


def _state(config: dict) -> dict:
    return {"format": FORMAT, "method": "pcl", "encoder": {"name": "facecycle"}, "encoder_state": {}, "model": {},
            "optimizer": {}, "scheduler": {}, "scaler": {}, "extra": {}, "rng": {}, "epoch": 3, "iteration": 12,
            "finished": True, "config": config}


def test_footnote_names_sobel_overflow_and_epoch_unit(tmp_path):
    config = {"pcl": {"pose_negatives": "faithful", "pose_fc_batches": "faithful", "temperature": 0.07,
                      "ablation": {"pdd": True, "orth": True, "flip_swap": True, "pose_step": True},
                      "dwa": {"enabled": True}, "neg_alpha": 1.0},
              "views": {"sobel_overflow": "faithful"}, "pretrain": {"epoch_unit": "identities"}}
    path = save_checkpoint(tmp_path / "checkpoint.pt", _state(config))
    info = checkpoint_info(path)
    assert info["variant"]["views.sobel_overflow"] == "faithful"
    assert info["epoch_unit"] == "identities"
    text = variant_text({"method_info": info})
    for want in ("variant.pose_negatives=faithful", "variant.pose_fc_batches=faithful",
                 "variant.views.sobel_overflow=faithful", "epochs trained 3", "epoch unit identities"):
        assert want in text, (want, text)


def test_baseline_footnote_has_no_pcl_variant(tmp_path):
    config = {"simclr": {"temperature": 0.1}, "views": {"sobel_overflow": "fixed"}, "pretrain": {"epoch_unit": "clips"}}
    state = _state(config)
    state["method"] = "simclr"
    info = checkpoint_info(save_checkpoint(tmp_path / "checkpoint.pt", state))
    assert "variant" not in info and info["settings"] == {"temperature": 0.1}
    assert "epoch unit clips" in variant_text({"method_info": info})
