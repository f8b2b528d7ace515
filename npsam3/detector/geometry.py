"""SequenceGeometryEncoder (sam3/model/geometry_encoders.py): box and point exemplars -> prompt tokens.

Runs for every prompt: with no exemplars it still yields the CLS token that enters the prompt.
Weights under ``geometry_encoder.``.
"""

import numpy as np

from .. import nn
from .encoder import encoder_layer

f32 = np.float32


def encode_points(p, points, labels, img_feat_normed):
    """_encode_points: [P, 2] normalised xy, [P] labels, [C, H, W] pre-normed map -> [P, C]."""
    x = nn.linear(points, p, "points_direct_project")
    sampled = nn.grid_sample_points(img_feat_normed, points * 2 - 1)
    x += nn.linear(sampled, p, "points_pool_project")
    enc_x, enc_y = nn.encode_xy(points[:, 0], points[:, 1])
    x += nn.linear(np.concatenate([enc_x, enc_y], -1), p, "points_pos_enc_project")
    return p["label_embed.weight"][labels.astype(np.int64)] + x


def encode_boxes(p, boxes, labels, img_feat_normed, roi_size=7):
    """_encode_boxes: [K, 4] normalised cxcywh, [K] labels, [C, H, W] pre-normed map -> [K, C].

    boxes_pool_project is a roi_size x roi_size Conv2d on the pooled ROI, i.e. a linear map of it.
    """
    c, h, w = img_feat_normed.shape
    x = nn.linear(boxes, p, "boxes_direct_project")
    xyxy = nn.box_cxcywh_to_xyxy(boxes) * np.array([w, h, w, h], f32)
    rois = nn.roi_align(img_feat_normed, xyxy, roi_size)  # [K, C, 7, 7]
    wp = p["boxes_pool_project.weight"]
    x += rois.reshape(len(boxes), -1) @ wp.reshape(wp.shape[0], -1).T + p["boxes_pool_project.bias"]
    enc_x, enc_y = nn.encode_xy(boxes[:, 0], boxes[:, 1])
    enc = np.concatenate([enc_y, enc_x, boxes[:, 3:4], boxes[:, 2:3]], -1)  # encode_boxes: y, x, h, w
    x += nn.linear(enc, p, "boxes_pos_enc_project")
    return p["label_embed.weight"][labels.astype(np.int64)] + x


def geometry_encoder(p, cfg, img_feat, img_pos, feat_size, points=None, point_labels=None,
                     boxes=None, box_labels=None):
    """SequenceGeometryEncoder.forward for one image.

    img_feat, img_pos: [HW, C] tokens of the lowest-resolution FPN level and its sine encoding.
    Returns the geometry prompt tokens [P + K + 1, C]: points, boxes, then CLS.
    """
    h, w = feat_size
    d = img_feat.shape[1]
    tokens = []
    if (points is not None and len(points)) or (boxes is not None and len(boxes)):
        normed = nn.layer_norm(img_feat, p, "img_pre_norm").T.reshape(d, h, w)
        if points is not None and len(points):
            tokens.append(encode_points(p, points, point_labels, normed))
        if boxes is not None and len(boxes):
            tokens.append(encode_boxes(p, boxes, box_labels, normed))
    tokens.append(p["cls_embed.weight"])
    x = nn.layer_norm(nn.linear(np.concatenate(tokens, 0), p, "final_proj"), p, "norm")
    for i in range(cfg["geometry_layers"]):
        x = encoder_layer(x, p, f"encode.{i}", cfg["heads"], memory=img_feat, memory_pos=img_pos)
    return nn.layer_norm(x, p, "encode_norm")
