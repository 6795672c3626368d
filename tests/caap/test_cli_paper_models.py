"""``--model paper:<key>`` (vit_lens.zoo) through the loader shared by ``caap explain``, ``bench`` and ``figure``."""
import argparse

import pytest

import vit_lens.zoo
from caap.cli import load_checked_model, load_model
from caap.cnn_model import CNNClassifier
from vit_lens import HookedViT


def tiny_paper_model(calls):
    real = vit_lens.zoo.load_paper_model

    def load(name, **kwargs):  # the real builder with random weights and a tiny depth, recording the call
        calls.append((name, kwargs))
        tiny = dict(depth=1) if vit_lens.zoo.get_paper_model(name).kind == "vit" else {}
        return real(name, **{**kwargs, "pretrained": False, **tiny})
    return load


@pytest.mark.parametrize("name, kind", [("paper:vit-s16", HookedViT), ("paper:resnet18", CNNClassifier)])
def test_paper_names_build_the_zoo_model(monkeypatch, name, kind):
    calls = []
    monkeypatch.setattr(vit_lens.zoo, "load_paper_model", tiny_paper_model(calls))
    model = load_model(argparse.Namespace(model=name, weights=None, device="cpu"))
    assert isinstance(model, kind)
    assert calls == [(name, {"pretrained": True, "checkpoint_path": None, "device": "cpu"})]


def test_unknown_paper_name_is_one_clear_error(capsys):
    with pytest.raises(ValueError, match=r"--model: unknown paper model 'paper:nope'; known: paper:vit-s16"):
        load_checked_model(argparse.Namespace(model="paper:nope", weights=None, device="cpu"))
