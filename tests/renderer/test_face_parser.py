"""The BiSeNet face parser of MuseTalk's blend: the real architecture with random weights, exported to
ONNX, loaded by the renderer, and its masks through the MuseTalk backend (and the fallback without it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from services.renderer.backends.face_parser import (  # noqa: E402
    FACE_PARSER,
    LOWER_LIP,
    NECK,
    NOSE,
    SKIN,
    FaceParser,
    class_mask,
)
from services.renderer.backends.onnx_models import ExecutionConfig, open_model  # noqa: E402
from tools.export_face_parser import ExportError, export_face_parser, load_bisenet, main  # noqa: E402
from tools.models.bisenet import BiSeNet, FaceParserExport  # noqa: E402

pytestmark = pytest.mark.tools


@pytest.fixture(scope="module")
def parser_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[BiSeNet, Path]:
    d = tmp_path_factory.mktemp("face-parser")
    net = load_bisenet(None, seed=3)
    torch.save(net.state_dict(), str(d / "79999_iter.pth"))
    out = d / "face_parser.onnx"
    assert main([str(d / "79999_iter.pth"), str(out)]) == 0  # the .pth path, as a user runs it
    return net, out


def test_key_layout_is_face_parsing_pytorch():
    """The parameter names and shapes of face-parsing.PyTorch's checkpoints (79999_iter.pth)."""
    state = BiSeNet().state_dict()
    expected = {
        "cp.resnet.conv1.weight": (64, 3, 7, 7),
        "cp.resnet.layer1.0.conv1.weight": (64, 64, 3, 3),
        "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "cp.resnet.layer4.1.bn2.running_var": (512,),
        "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
        "cp.arm32.conv_atten.weight": (128, 128, 1, 1),
        "cp.arm32.bn_atten.weight": (128,),
        "cp.conv_head32.conv.weight": (128, 128, 3, 3),
        "cp.conv_head16.bn.running_mean": (128,),
        "cp.conv_avg.conv.weight": (128, 512, 1, 1),
        "ffm.convblk.conv.weight": (256, 256, 1, 1),
        "ffm.conv1.weight": (64, 256, 1, 1),
        "ffm.conv2.weight": (256, 64, 1, 1),
        "conv_out.conv.conv.weight": (256, 256, 3, 3),
        "conv_out.conv_out.weight": (19, 256, 1, 1),
        "conv_out16.conv_out.weight": (19, 64, 1, 1),
        "conv_out32.conv.conv.weight": (64, 128, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith(("sp.", "fc.")) for k in state)  # no spatial path, no classifier
    params = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "tracked")))
    assert 12_000_000 < params < 13_500_000  # ResNet-18 backbone (11.2 M) + heads


def test_a_checkpoint_of_another_layout_is_rejected(tmp_path: Path):
    state = BiSeNet().state_dict()
    state["cp.resnet.fc.weight"] = torch.zeros(1000, 512)
    del state["ffm.conv1.weight"]
    torch.save(state, str(tmp_path / "other.pth"))
    with pytest.raises(ExportError, match=r"missing 1 .*ffm\.conv1\.weight.*unexpected 1"):
        load_bisenet(tmp_path / "other.pth")


def test_onnx_matches_torch_and_loads_in_the_renderer(parser_onnx):
    net, path = parser_onnx
    model = open_model("face_parser", path, FACE_PARSER, ExecutionConfig())
    image = np.random.default_rng(0).random((2, 3, 512, 512), dtype=np.float32)
    got = model.run({"image": image})[0]
    with torch.no_grad():
        want = FaceParserExport(net)(torch.from_numpy(image)).numpy()
    assert got.shape == (2, 19, 512, 512)
    assert np.abs(got - want).max() < 1e-3 * max(1.0, float(np.abs(want).max()))
    assert len(np.unique(got.argmax(1))) > 1  # random weights still give a varied parse


def test_masks_keep_the_lower_half_and_fade_at_the_border(parser_onnx):
    _, path = parser_onnx
    parser = FaceParser(open_model("face_parser", path, FACE_PARSER, ExecutionConfig()), "raw")
    crops = np.random.default_rng(1).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    masks = parser.masks(crops, 256)
    assert masks.shape == (3, 256, 256) and masks.dtype == np.float32
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    assert np.all(masks[:, :100] == 0.0)  # above the talking area (half the crop, minus the blur)
    assert np.all(masks[:, :, 0] == 0) and np.all(masks[:, -1] == 0)  # no box edge in the paste
    # the mask is the parse: where the parse has none of the face classes, the weight is 0
    parsed = parser.parse(crops)
    for m, p in zip(masks, parsed, strict=True):
        if not np.isin(p, (1, 11, 12, 13)).any():
            assert m.max() == 0.0


def test_class_modes():
    p = np.zeros((512, 512), np.int64)
    p[200:400, 150:362] = SKIN
    p[250:300, 236:276] = NOSE
    p[330:350, 220:292] = LOWER_LIP
    p[420:500, 180:332] = NECK
    raw, neck, jaw = (class_mask(p, m) > 0 for m in ("raw", "neck", "jaw"))
    assert raw[210, 200] and raw[340, 250] and not raw[270, 256] and not raw[450, 256]
    assert neck[450, 256] and neck[210, 200]
    assert not jaw[270, 256] and jaw[340, 250]
    # jaw: the skin grows by the cone (16 rows up, 6 down at 512 px) in the central band; at the
    # cheeks the erosion narrows it instead
    assert jaw[186, 256] and not raw[186, 256] and jaw[404, 256] and not raw[404, 256]
    assert not jaw[186, 160] and not jaw[300, 152] and raw[300, 152]
    with pytest.raises(ValueError):
        class_mask(p, "ears")


def test_export_random_from_the_command_line(tmp_path: Path):
    out = tmp_path / "random.onnx"
    assert main(["--random", str(out)]) == 0
    assert open_model("face_parser", out, FACE_PARSER, ExecutionConfig()).signature == FACE_PARSER
    with pytest.raises(SystemExit):
        main([str(out)])  # neither a .pth nor --random


def test_export_function_writes_metadata(tmp_path: Path):
    import onnx

    path = export_face_parser(load_bisenet(None), tmp_path / "fp.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["talkmesh.model"] == "face_parser" and meta["talkmesh.classes"] == "19"
