"""Detection transfer: box validation, VOC/COCO readers, tiling, the synthetic set, feature
pyramids, frozen encoders, COCO mAP, and one tiny `selfsup eval --task detection` run."""

import json
import math

import pytest
import torch

from selfsup.config import DetectionConfig, load_config
from selfsup.data import DataError, DataInfo
from selfsup.detection.boxes import BoxReport, DetectionDataset, DetectionSample, validate_boxes
from selfsup.detection.datasets import build_detection_data, parse_dataset_spec
from selfsup.detection.evaluate import detection_data_info, draw_detections, evaluate_detection
from selfsup.detection.model import ConvPyramid, EncoderFPN, SimplePyramid, build_detector
from selfsup.detection.readers import boxes_in_tile, coco_dataset, crop_tile, tile_dataset, tile_origins, voc_dataset
from selfsup.detection.synthetic import FASHION_MNIST_CLASSES, render_object, synthetic_fmnist
from selfsup.detection.train import train_detector
from selfsup.encoders import create_encoder

TINY_RESNET = {"channels": [8, 16, 32, 64]}
TINY_VIT = {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}


# --------------------------------------------------------------------------- fixtures


def write_image(path, width, height, seed=0):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)


def voc_xml(filename, width, height, objects):
    objs = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


@pytest.fixture
def voc_folder(tmp_path):
    """A flat VOC folder of 64x64 images: 6 with a cat and a dog, one of them also with a
    degenerate and an out-of-image box; a 7th whose only box is degenerate; an XML without
    its image; an unreadable XML."""
    root = tmp_path / "voc"
    root.mkdir()
    for i in range(7):
        write_image(root / f"img{i}.png", 64, 64, seed=i)
        objects = [("cat", (4 + i, 6, 30 + i, 40)), ("dog", (34, 20, 60, 58 - i))]
        if i == 2:
            objects += [("cat", (20, 10, 20, 30)), ("dog", (50, 50, 70, 60))]  # zero width; past the right edge
        if i == 6:
            objects = [("dog", (30, 40, 10, 50))]  # x2 < x1: the image is kept with no box
        (root / f"img{i}.xml").write_text(voc_xml(f"img{i}.png", 64, 64, objects))
    (root / "lost.xml").write_text(voc_xml("lost.png", 64, 64, [("cat", (1, 1, 9, 9))]))
    (root / "broken.xml").write_text("<annotation><object>")
    return root


# --------------------------------------------------------------------------- validation and readers


def test_validate_boxes_drops_and_reports_bad_boxes():
    boxes = torch.tensor([[1, 1, 5, 5],  # fine
                          [3, 3, 3, 8],  # zero width
                          [6, 9, 8, 2],  # negative height
                          [0, 0, 12, 4],  # past the right edge (width 10)
                          [-1, 2, 4, 4],  # left of the image
                          [float("nan"), 0, 2, 2],
                          [0, 0, 10, 20]])  # touches the right and bottom edges: inside
    labels = torch.arange(1, 8)
    report = BoxReport()
    kept, kept_labels = validate_boxes(boxes, labels, width=10, height=20, source="a.xml", report=report)
    assert kept_labels.tolist() == [1, 7]
    assert torch.equal(kept, boxes[[0, 6]])
    validate_boxes(torch.tensor([[2.0, 2, 1, 1]]), torch.tensor([1]), 10, 10, "b.xml", report)
    degenerate = "degenerate boxes (zero or negative width or height)"
    assert report.counts == {degenerate: 3, "out-of-image boxes": 2, "non-finite boxes": 1}
    assert report.files[degenerate] == ["a.xml", "b.xml"] and report.files["out-of-image boxes"] == ["a.xml"]
    assert report.total == 6 and "b.xml" in report.summary()


def test_voc_flat_folder_reports_bad_files_and_boxes(voc_folder):
    ds = voc_dataset(voc_folder)
    assert len(ds) == 7 and ds.class_names == ["cat", "dog"]
    assert ds.num_boxes == 12 and len(ds.target(6)["boxes"]) == 0  # the three bad boxes are gone
    image, target = ds[2]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert target["labels"].tolist() == [1, 2]
    assert torch.equal(target["boxes"], torch.tensor([[6.0, 6, 32, 40], [34, 20, 60, 56]]))
    rep = ds.report.as_dict()
    assert rep["degenerate boxes (zero or negative width or height)"] == {"count": 2, "files": ["img2.xml", "img6.xml"]}
    assert rep["out-of-image boxes"] == {"count": 1, "files": ["img2.xml"]}
    assert rep["annotation files without an image"]["files"] == ["lost.xml"]
    assert rep["unreadable annotation files"]["files"][0].startswith("broken.xml")


def test_voc_standard_layout_uses_imagesets_split(tmp_path):
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for i in range(4):
        write_image(root / "JPEGImages" / f"{i:06d}.jpg", 48, 32, seed=i)
        names = ["car"] if i < 3 else ["car", "bus"]  # "bus" only in the test image
        objects = [(n, (2 + 10 * k, 3, 12 + 10 * k, 20)) for k, n in enumerate(names)]
        (root / "Annotations" / f"{i:06d}.xml").write_text(voc_xml(f"{i:06d}.jpg", 48, 32, objects))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000000\n000001\n000002\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("000003\n")
    train, test = build_detection_data(DetectionConfig(dataset=f"voc:{root}"))
    assert [s.name for s in train.samples] == ["000000.jpg", "000001.jpg", "000002.jpg"]
    assert [s.name for s in test.samples] == ["000003.jpg"]
    assert train.class_names == ["car"] and test.num_boxes == 1  # the unseen class is dropped, and reported
    assert test.report.counts["boxes of classes absent from the training split"] == 1


def test_coco_json_reader(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        write_image(images / f"{i}.png", 40, 30, seed=i)
    ann = {"images": [{"id": 7, "file_name": "0.png", "width": 40, "height": 30},
                      {"id": 9, "file_name": "1.png", "width": 40, "height": 30},
                      {"id": 11, "file_name": "missing.png", "width": 40, "height": 30}],
           "categories": [{"id": 3, "name": "zebra"}, {"id": 1, "name": "ant"}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [5, 5, 10, 8], "iscrowd": 0, "area": 80},
                           {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 0, 8], "iscrowd": 0, "area": 0},
                           {"id": 3, "image_id": 9, "category_id": 1, "bbox": [30, 20, 10, 10], "iscrowd": 0,
                            "area": 100},
                           {"id": 4, "image_id": 9, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1, "area": 25}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    ds = coco_dataset(images, tmp_path / "ann.json")
    assert ds.class_names == ["ant", "zebra"]  # category id order
    assert [s.name for s in ds.samples] == ["0.png", "1.png"]
    assert torch.equal(ds.target(0)["boxes"], torch.tensor([[5.0, 5, 15, 13]])) and ds.target(0)["labels"].tolist() == [2]
    assert torch.equal(ds.target(1)["boxes"], torch.tensor([[30.0, 20, 40, 30]]))
    assert ds.report.counts == {"degenerate boxes (zero or negative width or height)": 1,
                                "crowd annotations (skipped)": 1,
                                "annotated images missing from the images folder": 1}


def test_dataset_specs_parse_or_explain():
    assert parse_dataset_spec("coco:/a/images,/a/ann.json").paths == ("/a/images", "/a/ann.json")
    assert parse_dataset_spec("voc:/data/VOC2007").kind == "voc"
    with pytest.raises(DataError, match="did you mean 'deepforest'"):
        parse_dataset_spec("deepforrest")
    with pytest.raises(DataError, match="coco:IMAGES_DIR,ANNOTATIONS.json"):
        parse_dataset_spec("coco:/only/one")
    with pytest.raises(DataError, match="voc needs a folder"):
        parse_dataset_spec("voc:")
    with pytest.raises(DataError, match="takes no path.*deepforest_root"):
        parse_dataset_spec("deepforest:/data/trees")


def test_missing_or_empty_data_is_a_clear_error(tmp_path, monkeypatch):
    import selfsup.detection.readers as det

    def build(dataset, **kw):
        return build_detection_data(DetectionConfig(dataset=dataset, **kw))

    with pytest.raises(DataError, match="does not exist"):
        build(f"voc:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .xml annotations"):
        build(f"voc:{tmp_path / 'empty'}")
    (tmp_path / "empty" / "a.xml").write_text(voc_xml("a.png", 8, 8, [("cat", (1, 1, 5, 5))]))  # no a.png
    with pytest.raises(DataError, match="no usable boxes.*annotation files without an image"):
        build(f"voc:{tmp_path / 'empty'}")
    with pytest.raises(DataError, match="annotation file .*ann.json.* does not exist"):
        build(f"coco:{tmp_path},{tmp_path / 'ann.json'}")
    (tmp_path / "ann.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read .* as COCO detection JSON"):
        build(f"coco:{tmp_path},{tmp_path / 'ann.json'}")
    with pytest.raises(DataError, match="deepforest_root .* does not exist"):
        build("deepforest", deepforest_root=str(tmp_path / "nowhere"))
    monkeypatch.setattr(det.importlib.util, "find_spec", lambda name: None)  # the wheel is not installed
    with pytest.raises(DataError, match="pip install --no-deps deepforest"):
        build("deepforest")


def test_undecodable_image_names_the_file(voc_folder):
    ds = voc_dataset(voc_folder)
    (voc_folder / "img0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="img0.png.*remove or replace") as err:
        ds.image(0)
    assert "on_bad_file" not in str(err.value)  # detection never skips files


# --------------------------------------------------------------------------- tiling


def test_tiles_clip_boxes_across_borders():
    assert tile_origins(250, 200, 100) == [(0, 0), (100, 0), (200, 0), (0, 100), (100, 100), (200, 100)]
    a = torch.tensor([[80.0, 20, 130, 60]])  # crosses x = 100; area 50 x 40 = 2000
    b = torch.tensor([[150.0, 90, 190, 180]])  # crosses y = 100; area 40 x 90 = 3600
    one = torch.tensor([1])
    # tile (0, 0) keeps 20 x 40 = 800 of a (0.4 >= 0.3); tile (100, 0) keeps 30 x 40 = 1200 (0.6)
    assert boxes_in_tile(a, one, 0, 0, 100, 0.3)[0].tolist() == [[80, 20, 100, 60]]
    assert boxes_in_tile(a, one, 100, 0, 100, 0.3)[0].tolist() == [[0, 20, 30, 60]]
    assert boxes_in_tile(a, one, 0, 0, 100, 0.5)[0].numel() == 0  # 0.4 < 0.5
    # b shows 40 x 10 = 400 (0.11) in tile (100, 0): dropped; 40 x 80 = 3200 (0.89) in tile (100, 100)
    assert boxes_in_tile(b, one, 100, 0, 100, 0.3)[0].numel() == 0
    assert boxes_in_tile(b, one, 100, 100, 100, 0.3)[0].tolist() == [[50, 0, 90, 80]]

    image = torch.randint(1, 256, (3, 200, 250), dtype=torch.uint8)
    tile = crop_tile(image, 200, 100, 100)
    assert torch.equal(tile[:, :, :50], image[:, 100:200, 200:250]) and (tile[:, :, 50:] == 0).all()

    src = DetectionDataset("big", [DetectionSample("big.png", image, 250, 200, torch.cat([a, b]),
                                                   torch.tensor([1, 1]))], ["tree"])
    tiles = tile_dataset(src, 100, 0.3)
    assert [s.name for s in tiles.samples] == ["big.png@0,0", "big.png@100,0", "big.png@100,100"]
    assert [s.boxes.tolist() for s in tiles.samples] == [[[80, 20, 100, 60]], [[0, 20, 30, 60]], [[50, 0, 90, 80]]]
    assert torch.equal(tiles.samples[1].image, image[:, 0:100, 100:200])


def test_deepforest_split_is_a_deterministic_partition_of_tiles(tmp_path):
    """The tiled set from a VOC folder written here (the suite never needs the deepforest wheel)."""
    root = tmp_path / "forest"
    root.mkdir()
    write_image(root / "site.png", 300, 200)
    boxes = [(10, 10, 40, 40), (80, 20, 130, 60), (220, 30, 260, 80), (20, 130, 60, 180), (150, 120, 190, 170),
             (230, 140, 280, 190)]  # one or two crowns in each of the six 100-pixel tiles
    crowns = [("Tree", b) for b in boxes]
    (root / "site.xml").write_text(voc_xml("site.png", 300, 200, crowns + [("Dead", (0, 0, 0, 5))]))
    cfg = DetectionConfig(dataset="deepforest", deepforest_root=str(root), tile_size=100, test_fraction=0.34)
    train, test = build_detection_data(cfg)
    again_train, _ = build_detection_data(cfg)
    names = {s.name for s in train.samples} | {s.name for s in test.samples}
    assert not {s.name for s in train.samples} & {s.name for s in test.samples}
    assert [s.name for s in train.samples] == [s.name for s in again_train.samples]
    assert len(names) == len(train) + len(test) == 6 and (len(train), len(test)) == (4, 2)
    assert train.class_names == ["tree"] and train.num_boxes + test.num_boxes == 7  # crown 2 is in two tiles
    assert train.report.counts["degenerate boxes (zero or negative width or height)"] == 1


# --------------------------------------------------------------------------- synthetic Fashion-MNIST


def small_synthetic(**kw):
    return DetectionConfig(synthetic_train=12, synthetic_test=6, synthetic_canvas=64, synthetic_object_size=(12, 30),
                           **kw)


def test_synthetic_fmnist_is_deterministic_and_boxes_hold_the_objects():
    from selfsup.config import DataConfig
    from selfsup.data import build_dataset

    cfg = small_synthetic()
    a, b = synthetic_fmnist(cfg, "train"), synthetic_fmnist(cfg, "train")
    assert all(torch.equal(x.image, y.image) and torch.equal(x.boxes, y.boxes) and torch.equal(x.labels, y.labels)
               for x, y in zip(a.samples, b.samples))
    other = synthetic_fmnist(small_synthetic(data_seed=1), "train")
    assert not all(torch.equal(x.image, y.image) for x, y in zip(a.samples, other.samples))
    test = synthetic_fmnist(cfg, "test")
    assert not set(a.meta["object_pool"]) & set(test.meta["object_pool"])  # train / test objects disjoint
    assert a.class_names == FASHION_MNIST_CLASSES

    fm = build_dataset(DataConfig(name="fashion-mnist"), "test")
    pool = a.meta["object_pool"]
    n_objects = 0
    for sample, placed in zip(a.samples, a.meta["placements"]):
        assert 2 <= len(placed) == len(sample.boxes) <= 5
        for (x1, y1, x2, y2), label, p in zip(sample.boxes.int().tolist(), sample.labels.tolist(), placed):
            image, fm_label = fm[pool[p["index"]]]
            assert label == fm_label + 1
            alone = torch.zeros(64, 64, dtype=torch.uint8)
            alone[p["y"]:p["y"] + p["size"], p["x"]:p["x"] + p["size"]] = render_object(image, p["size"])[0]
            ys, xs = alone.nonzero().unbind(1)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)  # tight around the object
            assert (sample.image[0][ys, xs] >= alone[ys, xs]).all()  # the object is on the canvas
            n_objects += 1
    assert n_objects == a.num_boxes

    single = synthetic_fmnist(small_synthetic(synthetic_objects=(1, 1)), "test")
    for s in single.samples:  # one object: the canvas' non-zero pixels span exactly its box
        ys, xs = s.image[0].nonzero().unbind(1)
        assert s.boxes.tolist() == [[xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]]


# --------------------------------------------------------------------------- pyramids and freezing


def test_fpn_backbone_strides_and_channels_for_a_tiny_resnet_and_vit():
    x = torch.randn(2, 1, 64, 64)
    resnet = create_encoder("resnet18", 1, TINY_RESNET)
    body = ConvPyramid(resnet)
    assert body.strides == [4, 8, 16, 32] and body.channels == [8, 16, 32, 64]
    fpn = EncoderFPN(body, 24).eval()
    out = fpn(x)
    assert list(out) == ["0", "1", "2", "3", "pool"] and fpn.strides == [4, 8, 16, 32, 64]
    assert [tuple(v.shape) for v in out.values()] == [(2, 24, 16, 16), (2, 24, 8, 8), (2, 24, 4, 4), (2, 24, 2, 2),
                                                      (2, 24, 1, 1)]
    dilated = ConvPyramid(create_encoder("resnet18", 1, {**TINY_RESNET, "output_stride": 16}))
    assert dilated.strides == [4, 8, 16] and dilated.channels == [8, 16, 64]  # layer4 (dilated) replaces layer3

    vit = create_encoder("vit_tiny_patch16_224", 1, TINY_VIT)
    body = SimplePyramid(vit, 64)
    assert body.strides == [1, 2, 4, 8] and body.channels == [8, 16, 32, 32]
    assert tuple(vit.patch_embed.img_size) == (64, 64)  # position embeddings resampled from 16 to 64
    maps = body.eval()(x)
    assert [tuple(v.shape) for v in maps.values()] == [(2, 8, 64, 64), (2, 16, 32, 32), (2, 32, 16, 16),
                                                       (2, 32, 8, 8)]
    assert EncoderFPN(body, 16).strides == [1, 2, 4, 8, 16]


def tiny_detection_cfg(**kw):
    return DetectionConfig(image_size=64, batch_size=7, epochs=1, warmup_steps=0, lr=0.05, fpn_channels=16,
                           box_head_dim=32, rois_per_image=32, **kw)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module, prefix=""):
    return {k for k, v in module.state_dict().items() if k.startswith(prefix) and not torch.equal(v, before[k])}


@pytest.mark.parametrize("trainable_layers", [0, 1])
def test_frozen_encoder_is_unchanged_while_the_heads_train(voc_folder, trainable_layers, capsys):
    ds = voc_dataset(voc_folder)  # RGB images for a 1-channel encoder; one image without boxes
    cfg = tiny_detection_cfg(trainable_layers=trainable_layers)
    torch.manual_seed(0)
    encoder = create_encoder("resnet18", 1, TINY_RESNET, fair_random_init=True)
    callers = snapshot(encoder)
    model = build_detector(encoder, detection_data_info(ds, cfg, 1), ds.num_classes, cfg)
    inner = model.backbone.body.encoder  # a copy: the caller's module is never frozen or trained
    assert inner is not encoder and all(torch.equal(v, callers[k]) for k, v in snapshot(inner).items())
    before_enc, before_all = snapshot(inner), snapshot(model)
    fit = train_detector(model, ds, cfg, 1, "cpu", seed=0, log=lambda s: None)
    assert fit["steps"] == 1 and all(math.isfinite(v) for v in fit["final_losses"].values())
    assert "[detection] training" not in capsys.readouterr().err  # no bar: stderr is not a terminal here
    for part in ("backbone.fpn.", "rpn.head.", "roi_heads.box_head.", "roi_heads.box_predictor."):
        assert changed(before_all, model, part), f"{part} did not train"
    assert not changed(callers, encoder) and all(p.requires_grad for p in encoder.parameters())
    moved = changed(before_enc, inner)
    if trainable_layers == 0:
        assert not moved
    else:  # only the last stage's convolutions; BatchNorm weights and statistics never
        norms = tuple(f"{n}." for n, m in inner.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert moved and all(k.startswith("layer4.") and not k.startswith(norms) for k in moved)


def test_build_detector_leaves_the_callers_vit_as_it_was():
    vit = create_encoder("vit_tiny_patch16_224", 1, TINY_VIT)
    pos_embed = vit.pos_embed.detach().clone()
    model = build_detector(vit, DataInfo(1, 64, 2, (0.5,), (0.25,)), 2, tiny_detection_cfg())
    inner = model.backbone.body.encoder
    assert tuple(inner.patch_embed.img_size) == (64, 64) and not any(p.requires_grad for p in inner.parameters())
    assert tuple(vit.patch_embed.img_size) == (16, 16) and torch.equal(vit.pos_embed, pos_embed)
    assert all(p.requires_grad for p in vit.parameters())


# --------------------------------------------------------------------------- end to end


TINY_RUN = ["detection.synthetic_train=12", "detection.synthetic_test=6", "detection.synthetic_canvas=64",
            "detection.synthetic_object_size=[12, 30]", "detection.image_size=64", "detection.epochs=1",
            "detection.batch_size=6", "detection.fpn_channels=16", "detection.box_head_dim=32",
            "encoder.kwargs={channels: [8, 16, 32, 64]}"]


def test_cli_detection_end_to_end(tmp_path, capsys):
    from selfsup.cli import main

    out = tmp_path / "det"
    tiny = TINY_RUN
    assert main(["eval", "random:resnet18", "--task", "detection", "--dataset", "synthetic-fmnist",
                 "--out", str(out), *tiny]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 1
    r = rows[0]
    train, test = build_detection_data(load_config(None, ["method.name=simclr", *tiny]).detection)
    assert (r["train_images"], r["test_images"], r["train_boxes"], r["test_boxes"]) == (
        12, 6, train.num_boxes, test.num_boxes)
    assert r["steps"] == 2 and r["encoder"]["in_chans"] == 1 and r["encoder"]["trainable_params"] == 0
    assert list(r["per_class_ap"]) == FASHION_MNIST_CLASSES and 0 <= r["map"] <= r["ap50"] <= 100
    scored = [v for v in r["per_class_ap"].values() if v is not None]
    assert r["map"] == pytest.approx(sum(scored) / len(scored), abs=0.01)  # COCO's mAP: mean over classes
    assert "| random-init resnet18 | synthetic-fmnist |" in (out / "results.md").read_text()
    assert "results written to" in capsys.readouterr().out
    assert (out / "plots" / "detection_random-init_resnet18.png").stat().st_size > 0  # true and predicted boxes
    assert main(["compare", str(out)]) == 0  # its mAP in compare's table (it gave a row of blank cells)
    assert f"| {r['map']:.2f} | {r['ap50']:.2f} | {r['ap75']:.2f} |" in capsys.readouterr().out

    # a path target (an export directory) is loaded through selfsup's loader
    from selfsup.artifacts.card import make_card
    from selfsup.artifacts.exportdir import write_export
    from selfsup.data import DataInfo
    from selfsup.encoders import create_encoder

    cfg = load_config(None, ["method.name=simclr", *tiny])
    enc = create_encoder("resnet18", 1, cfg.encoder.kwargs)
    write_export(enc, make_card(cfg, DataInfo(1, 28, 10, (0.5,), (0.25,), 100), enc), tmp_path / "exp")
    assert main(["eval", str(tmp_path / "exp"), "--task", "detection", "--dataset", "synthetic-fmnist",
                 "--out", str(tmp_path / "det2"), "eval.plots=false", *tiny]) == 0
    assert json.loads((tmp_path / "det2" / "results.json").read_text())[0]["target"] == str(tmp_path / "exp")
    assert not (tmp_path / "det2" / "plots").exists()  # eval.plots=false draws nothing
    capsys.readouterr()

    assert main(["eval", "random:resnet18", "--task", "detection", "--baseline", "pixels"]) == 2
    assert "no feature maps" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, key, needs, it_is", [
    (["detection.tile_size=300"], "tile_size=300", "deepforest", "synthetic-fmnist"),
    (["detection.min_visible=0.5", "detection.dataset=voc:/data/a"], "min_visible=0.5", "deepforest", "voc:/data/a"),
    (["detection.deepforest_root=/data/trees", "detection.dataset=coco:/i,/a.json"], "deepforest_root='/data/trees'",
     "deepforest", "coco:/i,/a.json"),
    (["detection.synthetic_train=50", "detection.dataset=deepforest"], "synthetic_train=50", "synthetic-fmnist",
     "deepforest"),
    (["detection.synthetic_objects=[1, 3]", "detection.dataset=voc:/d"], "synthetic_objects=(1, 3)", "synthetic-fmnist",
     "voc:/d"),
])
def test_detection_keys_of_another_dataset_are_refused(overrides, key, needs, it_is):
    """A dataset-specific detection key set for another dataset would be ignored: refused, one line."""
    from selfsup.config import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(None, ["method.name=simclr", *overrides])
    assert str(err.value) == (f"config key detection.{key} applies only when detection.dataset is {needs} (it is "
                              f"{it_is}), so it would be ignored: drop it, or set detection.dataset={needs}")
    load_config(None, ["method.name=simclr", *overrides[:1], f"detection.dataset={needs}"])  # its own dataset: fine


def test_cli_dataset_is_the_config_dataset_for_the_key_check(capsys):
    """--dataset deepforest makes detection.tile_size apply (no refusal before the data is read);
    without it the key is refused in one line, before anything runs."""
    from selfsup.cli import main

    assert main(["eval", "random:resnet18", "--task", "detection", "detection.tile_size=300"]) == 2
    assert "detection.tile_size=300 applies only when detection.dataset is deepforest" in capsys.readouterr().err
    assert main(["eval", "random:resnet18", "--task", "detection", "--dataset", "deepforest",
                 "detection.tile_size=300", "detection.deepforest_root=/nonexistent/trees"]) == 2
    err = capsys.readouterr().err
    assert "applies only when" not in err and "deepforest_root '/nonexistent/trees' does not exist" in err


def test_detection_results_of_each_dataset_have_their_own_folder():
    """A second detection dataset never overwrites the first one's results.json."""
    from selfsup.cli_eval import detection_tag

    def tag(*overrides):
        return detection_tag(load_config(None, ["method.name=simclr", *overrides]))

    tags = [tag(), tag("detection.dataset=deepforest"), tag("detection.dataset=voc:/data/a"),
            tag("detection.dataset=voc:/data/b"), tag("detection.dataset=voc:/data/a", "detection.test_dataset=voc:/t"),
            tag("detection.dataset=coco:/im,/ann.json")]
    assert tags[:2] == ["synthetic-fmnist", "deepforest"]
    assert len(set(tags)) == len(tags)  # every dataset spec its own folder
    assert tags[2].startswith("voc-") and tags[5].startswith("coco-")
    assert tag("detection.dataset=voc:/data/a") == tags[2]  # the same data: the same folder
    # the deformable detector's results go beside the plain one's, never over them
    assert tag("detection.deformable=true") == "synthetic-fmnist-deformable"
    assert tag("detection.dataset=voc:/data/a", "detection.deformable=true") == tags[2] + "-deformable"


def test_detection_results_of_other_settings_never_replace_each_other(tmp_path, monkeypatch):
    """The default folder was one per target and dataset: `--task detection detection.epochs=2` replaced the
    results of epochs=1 in it. Each detection setting (and seed, and set of baselines) now has a folder of its
    own; the same settings again write to the same one."""
    from selfsup.cli import main
    from selfsup.cli_eval import detection_digest

    monkeypatch.chdir(tmp_path)
    base = ["eval", "random:resnet18", "--task", "detection", "eval.plots=false", *TINY_RUN]
    assert main(base) == 0 and main([a.replace("batch_size=6", "batch_size=4") for a in base]) == 0 and main(base) == 0
    results = sorted(tmp_path.glob("runs/eval-detection/random-resnet18/synthetic-fmnist-*/results.json"))
    assert len(results) == 2
    assert sorted(json.loads(p.read_text())[0]["steps"] for p in results) == [2, 3]  # 12 canvases, batch 6 / 4

    def digest(*overrides, baselines=()):
        return detection_digest(load_config(None, ["method.name=simclr", *overrides]), list(baselines))

    assert digest() == digest() and len({digest(), digest("detection.lr=0.01"), digest("seed=1"),
                                         digest(baselines=["pixels"]), digest("detection.deformable=true")}) == 5
    assert digest("detection.num_workers=2") == digest()  # decodes the same images faster: the same results


def test_evaluation_draws_test_images_with_boxes_and_shows_progress(tmp_path, capsys, monkeypatch):
    """plot_dir: the first test images (at most 6) with true and predicted boxes, one panel each; where
    bars are shown (selfsup.progress.enabled), a tqdm bar over every training step on stderr."""
    from test_plots import drawn, panels

    import selfsup.progress
    from selfsup.detection.evaluate import picture_name

    monkeypatch.setattr(selfsup.progress, "enabled", lambda: True)  # as if stderr were a terminal

    cfg = load_config(None, ["method.name=simclr", *TINY_RUN, "detection.synthetic_test=4"])
    row = evaluate_detection("random:resnet18", cfg, device="cpu", log=lambda s: None, plot_dir=tmp_path / "plots")
    picture = tmp_path / "plots" / picture_name(row["label"])
    assert picture.name == "detection_random-init_resnet18.png" and row["label"] == "random-init resnet18"
    assert panels(picture) == 4 == row["test_images"]  # fewer test images than PICTURE_IMAGES: all of them
    drawn(picture)
    err = capsys.readouterr().err
    assert "[detection] training" in err and f"{row['steps']}/{row['steps']}" in err


def test_draw_detections_one_panel_per_image_up_to_count(voc_folder, tmp_path):
    from test_plots import panels

    ds = voc_dataset(voc_folder)  # 7 images
    preds = [{"boxes": ds.target(i)["boxes"] + 1, "scores": torch.full((len(ds.target(i)["boxes"]),), 0.9),
              "labels": ds.target(i)["labels"]} for i in range(len(ds))]
    assert panels(draw_detections(ds, preds, tmp_path / "a.png", count=2)) == 2
    assert panels(draw_detections(ds, preds, tmp_path / "b.png")) == 6  # PICTURE_IMAGES of the 7
    assert draw_detections(DetectionDataset("empty", [], ["cat"]), [], tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()


def test_detection_table_lists_each_rows_warnings_under_it():
    """A detection row's warnings (a run evaluated while another process trained it) were written to
    results.json but not results.md; they are listed under the table, naming the row."""
    from selfsup.detection.evaluate import detection_markdown

    row = {"target": "runs/a", "label": "run a", "kind": "pretrained", "dataset": "synthetic-fmnist", "map": 10.0,
           "ap50": 20.0, "ap75": 5.0, "train_images": 12, "test_images": 6, "epochs": 1, "steps": 2, "seconds": 3.0,
           "classes": ["a"], "trainable_layers": 0, "image_size": 64, "batch_size": 6, "lr": 0.02, "seed": 0,
           "warnings": ["runs/a was being trained by process 12 when evaluated"]}
    text = detection_markdown([row, {**row, "label": "random-init resnet18", "kind": "random", "warnings": []}])
    assert text.count("**Warning**") == 1
    assert "\n- **Warning** (run a): runs/a was being trained by process 12 when evaluated\n" in text
