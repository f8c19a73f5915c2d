"""Detection transfer of a frozen encoder (``selfsup eval TARGET --task detection``).

One module per job, in import order:

- ``boxes``: what a detection dataset is (``DetectionDataset``, ``Target``), the box checks
  (``validate_boxes``, ``BoxReport``) and seeded splits;
- ``readers``: Pascal VOC XML, COCO JSON and the deepforest tree crowns cut into tiles;
- ``synthetic``: Fashion-MNIST objects pasted on canvases (``synthetic-fmnist``);
- ``datasets``: ``--dataset`` specs and the (train, test) sets of a run;
- ``deformable``: modulated deformable convolutions (DCNv2) for ``detection.deformable``;
- ``model``: Faster R-CNN + FPN over a copy of the encoder (ViTDet's simple pyramid for ViTs);
- ``train``: training and prediction (``train_detector``, ``predict``);
- ``metrics``: COCO mAP through torchmetrics (``coco_map``);
- ``evaluate``: one target end to end (``evaluate_detection``), its picture and the results table.

The package sits on the evaluation layer (beside ``selfsup.eval``): it needs an encoder, never
the training code of ``selfsup.train``.
"""
