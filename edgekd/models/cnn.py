"""Cross-architecture students: small CNNs for images and for token sequences.

A text CNN (Kim 2014 style: embedding -> 1-D convolutions -> max-pool over time) is a classic
target for distilling BERT (Tang et al. 2019 use a BiLSTM; a CNN exports to ONNX and quantizes
more simply on every device). Built from a plain config so the spec can rebuild it.
"""
from __future__ import annotations

import torch
from torch import nn


class ImageCNN(nn.Module):
    def __init__(self, in_channels: int, channels: list[int], kernel_size: int, num_labels: int):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, width in enumerate(channels):
            layers += [nn.Conv2d(c, width, kernel_size, padding=kernel_size // 2), nn.BatchNorm2d(width), nn.ReLU()]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            c = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(pixel_values)).flatten(1)
        return self.classifier(x)


class TextCNN(nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int, channels: list[int], kernel_size: int, num_labels: int,
                 pad_id: int = 0):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        layers: list[nn.Module] = []
        c = embedding_dim
        for width in channels:
            layers += [nn.Conv1d(c, width, kernel_size, padding=kernel_size // 2), nn.ReLU()]
            c = width
        self.convs = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids).transpose(1, 2)  # [B, E, S]
        x = self.convs(x)
        # Max over real tokens only. After the last ReLU every value is >= 0, so zeroing the padded positions leaves
        # the max as it is, and the tensor's range stays the activations' own: filling them with -1e4 instead (needed
        # when there is no convolution) gives a uint8 quantizer a step of ~40 and a constant output.
        mask = attention_mask[:, None, :].to(x.dtype)
        x = x * mask if len(self.convs) else x * mask + (mask - 1.0) * 1e4
        return self.classifier(x.max(dim=2).values)


def build_cnn(spec: dict) -> nn.Module:
    c = spec["cnn_config"]
    if spec["family"] == "cnn-image":
        return ImageCNN(c["in_channels"], c["channels"], c["kernel_size"], c["num_labels"])
    return TextCNN(c["vocab_size"], c["embedding_dim"], c["channels"], c["kernel_size"], c["num_labels"], c.get("pad_id", 0))
