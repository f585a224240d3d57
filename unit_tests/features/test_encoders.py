from __future__ import annotations

import torch
import pytest
from safetensors.torch import save_file

from milkit.errors import ConfigError, MILKitError
from milkit.features.encoders import ENCODERS, IMAGENET_MEAN, IMAGENET_STD, PatchEncoder, _timm_model, create_encoder

DEPTH_KW = {"resnet50_trunc": {}, "tiny": {}}  # CNN / tiny: full architecture; ViTs: one block suffices for dims


@pytest.mark.parametrize("name", ENCODERS.names())
def test_declared_output_dim(name):
    """Every registered encoder's architecture really produces its declared dim (built on the meta device)."""
    spec = ENCODERS.meta(name)["spec"]
    assert spec.precision in ("fp32", "fp16", "bf16") and len(spec.mean) == len(spec.std) == 3
    with torch.device("meta"):
        enc = PatchEncoder(spec, _timm_model(spec, **DEPTH_KW.get(name, {"depth": 1})), "meta")
        out = enc.encode(torch.empty(2, 256, 256, 3, dtype=torch.uint8))
    assert tuple(out.shape) == (2, spec.dim)
    assert ENCODERS.meta(name)["dim"] == spec.dim


def test_declarations_follow_the_model_cards():
    expect = {"resnet50_trunc": (1024, "fp32"), "uni": (1024, "fp16"), "uni2_h": (1536, "bf16"),
              "virchow2": (2560, "fp16"), "gigapath": (1536, "fp16"), "hoptimus0": (1536, "fp16"),
              "phikon": (768, "fp32"), "phikon_v2": (1024, "fp32"), "tiny": (64, "fp32")}
    for name, (dim, precision) in expect.items():
        meta = ENCODERS.meta(name)
        assert (meta["dim"], meta["precision"]) == (dim, precision), name
    assert ENCODERS.meta("hoptimus0")["spec"].mean[0] == pytest.approx(0.707223)


def test_tiny_is_seeded_and_preprocesses_on_device():
    a, b, c = create_encoder("tiny"), create_encoder("tiny"), create_encoder("tiny", seed=1)
    tiles = torch.randint(0, 256, (3, 100, 100, 3), dtype=torch.uint8)
    with torch.inference_mode():
        fa, fb, fc = a.encode(tiles), b.encode(tiles), c.encode(tiles)
    assert fa.shape == (3, 64) and torch.equal(fa, fb) and not torch.allclose(fa, fc)
    white = a.preprocess(torch.full((1, 64, 64, 3), 255, dtype=torch.uint8))
    expect = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(white[0, :, 5, 5], expect)
    assert a.preprocess(tiles).shape == (3, 3, 64, 64) and a.weights_id == "random:0"
    # the CPU resize runs on uint8; it matches a float resize up to rounding
    ref = torch.nn.functional.interpolate(tiles.permute(0, 3, 1, 2).float() / 255, size=(64, 64), mode="bilinear",
                                          antialias=True, align_corners=False)
    ref = (ref - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert (a.preprocess(tiles) - ref).abs().max() < 1.01 / 255 / min(IMAGENET_STD)


def test_local_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = create_encoder("tiny", seed=5)
    sd = source.model.state_dict()
    save_file(sd, tmp_path / "tiny.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "tiny.pth")
    tiles = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.inference_mode():
        ref = source.encode(tiles)
        for fname in ("tiny.safetensors", "tiny.pth"):
            enc = create_encoder("tiny", weights=str(tmp_path / fname))
            torch.testing.assert_close(enc.encode(tiles), ref, rtol=0, atol=0)
            assert enc.weights_id.startswith("sha256:") and len(enc.weights_id) == 71


def test_resnet50_trunc_from_full_torchvision_state_dict(tmp_path):
    import timm

    full = timm.create_model("resnet50", num_classes=1000).eval()  # conv1..layer4 + fc, torchvision key names
    torch.save(full.state_dict(), tmp_path / "resnet50-0676ba61.pth")
    enc = create_encoder("resnet50_trunc", weights=str(tmp_path / "resnet50-0676ba61.pth"))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        want = full.layer3(full.layer2(full.layer1(full.maxpool(full.act1(full.bn1(full.conv1(x))))))).mean((2, 3))
        got = enc(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_weight_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"encoder 'uni' needs weights: .*pytorch_model\.bin.*MahmoodLab/UNI"):
        create_encoder("uni")
    with pytest.raises(ConfigError, match=r"weights file .*missing\.bin not found \(expected pytorch_model\.bin"):
        create_encoder("uni", weights=str(tmp_path / "missing.bin"))
    save_file({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="weights lack .* tensors of the architecture"):
        create_encoder("tiny", weights=str(tmp_path / "other.safetensors"))
    sd = create_encoder("tiny").model.state_dict()
    save_file({**sd, "blocks.0.attn.qkv.weight": torch.zeros(5, 5)}, tmp_path / "shape.safetensors")
    with pytest.raises(ConfigError, match=r"blocks.0.attn.qkv.weight has shape \(5, 5\)"):
        create_encoder("tiny", weights=str(tmp_path / "shape.safetensors"))
    (tmp_path / "junk.bin").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="junk.bin: cannot read weights"):
        create_encoder("tiny", weights=str(tmp_path / "junk.bin"))
    with pytest.raises(MILKitError, match="unknown encoder"):
        create_encoder("conch")


def test_hub_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"cannot fetch hf-hub:timm/resnet50.tv_in1k .*encoder.weights="):
        create_encoder("resnet50_trunc", hub=True)
